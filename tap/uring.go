package tap

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An io_uring made for one job: batches of readv(2) on one file, so that
// a burst of frames costs one system call rather than one per frame (on a
// virtual machine a system call's entry and exit alone can cost a
// microsecond). The ring is made disabled, given the file as its only
// registered file, restricted to readv on registered files, and only then
// enabled: whatever later gets hold of it can read that file and do
// nothing else, and ferry's seccomp filter, installed afterwards, allows
// io_uring_enter but neither io_uring_setup nor io_uring_register.
//
// The file must be nonblocking: a read then completes inside the
// io_uring_enter that submitted it, with the data or EAGAIN, and is never
// handed to io_uring's worker threads or left waiting (newURing checks it).

// From linux/io_uring.h.
const (
	ioringSetupRDisabled = 1 << 6
	ioringFeatSingleMmap = 1 << 0

	ioringOffSQRing = 0
	ioringOffCQRing = 0x8000000
	ioringOffSQEs   = 0x10000000

	ioringOpReadv    = 1
	iosqeFixedFile   = 1 << 0
	ioringRegFiles   = 2
	ioringRegRestrct = 11
	ioringRegEnable  = 12

	ioringEnterGetEvents = 1

	ioringRestrictSQEOp            = 1
	ioringRestrictSQEFlagsAllowed  = 2
	ioringRestrictSQEFlagsRequired = 3
)

type uringSQRingOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

type uringCQRingOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  uringSQRingOffsets
	cqOff                                                                  uringCQRingOffsets
}

type uringSQE struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	rwFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad         uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringRestriction struct {
	opcode uint16
	arg    uint8 // sqe_op, sqe_flags or register_op
	resv   uint8
	resv2  [3]uint32
}

// uring is a restricted ring of readv on one file.
type uring struct {
	fd      int
	entries uint32
	sqMap   []byte
	cqMap   []byte // nil when the kernel maps both rings at once
	sqeMap  []byte

	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	sqes    []uringSQE
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []uringCQE

	queued uint32 // SQEs filled since the last submit
}

// newURing returns a ring of entries readv slots on file.
func newURing(file int, entries uint32) (*uring, error) {
	p := uringParams{flags: ioringSetupRDisabled}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r := &uring{fd: int(fd), entries: p.sqEntries}
	if err := r.mapRings(&p); err != nil {
		r.close()
		return nil, err
	}
	if err := r.restrict(file); err != nil {
		r.close()
		return nil, err
	}
	if err := r.probe(); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *uring) mapRings(p *uringParams) error {
	sqSize := int(p.sqOff.array) + int(p.sqEntries)*4
	cqSize := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(uringCQE{}))
	single := p.features&ioringFeatSingleMmap != 0
	if single {
		sqSize = max(sqSize, cqSize)
	}
	var err error
	if r.sqMap, err = unix.Mmap(r.fd, ioringOffSQRing, sqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("map io_uring SQ ring: %w", err)
	}
	cq := r.sqMap
	if !single {
		if r.cqMap, err = unix.Mmap(r.fd, ioringOffCQRing, cqSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
			return fmt.Errorf("map io_uring CQ ring: %w", err)
		}
		cq = r.cqMap
	}
	sqeSize := int(p.sqEntries) * int(unsafe.Sizeof(uringSQE{}))
	if r.sqeMap, err = unix.Mmap(r.fd, ioringOffSQEs, sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("map io_uring SQEs: %w", err)
	}
	r.sqTail = (*uint32)(unsafe.Pointer(&r.sqMap[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&r.sqMap[p.sqOff.ringMask]))
	r.sqArray = unsafe.Slice((*uint32)(unsafe.Pointer(&r.sqMap[p.sqOff.array])), p.sqEntries)
	r.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&r.sqeMap[0])), p.sqEntries)
	r.cqHead = (*uint32)(unsafe.Pointer(&cq[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&cq[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&cq[p.cqOff.ringMask]))
	r.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&cq[p.cqOff.cqes])), p.cqEntries)
	// The SQ array maps slot i to SQE i once and for all.
	for i := range r.sqArray {
		r.sqArray[i] = uint32(i)
	}
	return nil
}

// restrict registers file as the ring's only file, allows readv on
// registered files only, and enables the ring.
func (r *uring) restrict(file int) error {
	files := [1]int32{int32(file)}
	if err := r.register(ioringRegFiles, unsafe.Pointer(&files[0]), 1); err != nil {
		return fmt.Errorf("io_uring register file: %w", err)
	}
	rs := [...]uringRestriction{
		{opcode: ioringRestrictSQEOp, arg: ioringOpReadv},
		{opcode: ioringRestrictSQEFlagsAllowed, arg: iosqeFixedFile},
		{opcode: ioringRestrictSQEFlagsRequired, arg: iosqeFixedFile},
	}
	if err := r.register(ioringRegRestrct, unsafe.Pointer(&rs[0]), len(rs)); err != nil {
		return fmt.Errorf("io_uring restrict: %w", err)
	}
	if err := r.register(ioringRegEnable, nil, 0); err != nil {
		return fmt.Errorf("io_uring enable: %w", err)
	}
	return nil
}

func (r *uring) register(op uintptr, arg unsafe.Pointer, n int) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), op, uintptr(arg), uintptr(n), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func (r *uring) close() {
	for _, m := range [][]byte{r.sqeMap, r.cqMap, r.sqMap} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	r.sqeMap, r.cqMap, r.sqMap = nil, nil, nil
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// queueReadv fills the next SQE with a readv of iov on the registered file,
// tagged with tag. At most r.entries may be queued between submits.
func (r *uring) queueReadv(iov []unix.Iovec, tag uint64) {
	tail := *r.sqTail + r.queued // only this goroutine moves the tail
	sqe := &r.sqes[tail&r.sqMask]
	*sqe = uringSQE{
		opcode:   ioringOpReadv,
		flags:    iosqeFixedFile,
		fd:       0, // the index of the registered file
		addr:     uint64(uintptr(unsafe.Pointer(&iov[0]))),
		len:      uint32(len(iov)),
		rwFlags:  unix.RWF_NOWAIT, // EAGAIN, not a wait in poll, when empty
		userData: tag,
	}
	r.queued++
}

// submit hands the queued reads to the kernel, which does them in order
// before it returns, and calls done with each one's tag and result (bytes
// read, or a negative errno). It does not tell Go's scheduler about the
// call, which never waits (see readvRaw). Should a read not complete at
// once, submit waits for it (telling the scheduler), so that no read is
// left with a buffer when it returns, and then returns an error. On
// any error the ring is not to be used again: reads it did not submit
// stay queued, and their buffers untouched.
func (r *uring) submit(done func(tag uint64, res int32)) error {
	n := r.queued
	if n == 0 {
		return nil
	}
	atomic.StoreUint32(r.sqTail, *r.sqTail+n) // release: the SQEs are written
	r.queued = 0
	var submitted uint32
	for submitted < n {
		ret, _, errno := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(n-submitted), 0, 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || ret == 0 {
			r.reap(done)
			if errno == 0 {
				errno = unix.EAGAIN
			}
			return fmt.Errorf("io_uring_enter: submitted %d of %d reads: %w", submitted, n, errno)
		}
		submitted += uint32(ret)
	}
	got := r.reap(done)
	if got == n {
		return nil
	}
	// With RWF_NOWAIT a read either completes at once or fails with
	// EOPNOTSUPP, which probe sees first: this is for a kernel that
	// would do otherwise.
	for got < n {
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(n-got), ioringEnterGetEvents, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return fmt.Errorf("io_uring_enter: wait for reads: %w", errno)
		}
		got += r.reap(done)
	}
	// The file does not take nonblocking reads from io_uring, which then
	// hands them to its worker threads, one at a time.
	return errors.New("io_uring reads did not complete at once")
}

// reap calls done for each completion in the CQ ring and returns how many.
func (r *uring) reap(done func(tag uint64, res int32)) uint32 {
	head := *r.cqHead
	tail := atomic.LoadUint32(r.cqTail) // acquire: the CQEs are written
	for h := head; h != tail; h++ {
		c := &r.cqes[h&r.cqMask]
		done(c.userData, c.res)
	}
	atomic.StoreUint32(r.cqHead, tail)
	return tail - head
}

// probe checks that reads on the file complete inside io_uring_enter, with
// a read of nothing, which takes no frame.
func (r *uring) probe() error {
	var b [1]byte
	iov := []unix.Iovec{{Base: &b[0]}}
	r.queueReadv(iov, 0)
	res := int32(-1)
	if err := r.submit(func(_ uint64, v int32) { res = v }); err != nil {
		return err
	}
	if res != 0 {
		return fmt.Errorf("io_uring probe read: %w", unix.Errno(-res))
	}
	return nil
}
