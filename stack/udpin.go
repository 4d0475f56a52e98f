package stack

import (
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpInBatch is how many datagrams udpIn takes from a host socket with one
// recvmmsg.
const udpInBatch = 16

// udpInArenas lends the arenas udpIn reads into: udpInBatch datagrams of
// the largest size, borrowed only while a read finds datagrams, so that an
// idle flow holds none.
var udpInArenas = sync.Pool{New: func() any { b := make([]byte, udpInBatch*maxDatagram); return &b }}

// udpIn reads a UDP flow's datagrams from its host socket, up to
// udpInBatch with one recvmmsg, where reading them one at a time costs a
// syscall each.
type udpIn struct {
	msgs   [udpInBatch]mmsghdr
	iovs   [udpInBatch]unix.Iovec
	arena  *[]byte  // borrowed from udpInArenas between read and release
	dgrams [][]byte // the datagrams read, in arena
}

// read waits until the socket has datagrams (or rc's deadline passes) and
// reads what is there, at most udpInBatch, into in.dgrams; release gives
// their memory back. Errors are those of a read on the socket.
func (in *udpIn) read(rc syscall.RawConn) error {
	in.release()
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		in.arena = udpInArenas.Get().(*[]byte)
		for i := range in.msgs {
			in.iovs[i] = unix.Iovec{Base: &(*in.arena)[i*maxDatagram]}
			in.iovs[i].SetLen(maxDatagram)
			in.msgs[i] = mmsghdr{}
			in.msgs[i].hdr.Iov = &in.iovs[i]
			in.msgs[i].hdr.SetIovlen(1)
		}
		for {
			r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, // raw: see readRaw
				uintptr(unsafe.Pointer(&in.msgs[0])), udpInBatch, unix.MSG_DONTWAIT, 0, 0)
			switch e {
			case 0:
				for i := range int(r) {
					off := i * maxDatagram
					in.dgrams = append(in.dgrams, (*in.arena)[off:off+int(in.msgs[i].len)])
				}
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				in.release()
				return false // park until readable
			default:
				rerr = e
				in.release()
				return true
			}
		}
	})
	if err != nil {
		return err
	}
	if rerr != nil {
		return os.NewSyscallError("recvmmsg", rerr)
	}
	return nil
}

// release gives back the arena of the last read.
func (in *udpIn) release() {
	in.dgrams = in.dgrams[:0]
	for i := range in.iovs {
		in.iovs[i].Base = nil // no hold on an arena given back
	}
	if in.arena != nil {
		udpInArenas.Put(in.arena)
		in.arena = nil
	}
}
