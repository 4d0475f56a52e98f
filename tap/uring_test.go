package tap

import (
	"bytes"
	"net"
	"runtime"
	"slices"
	"testing"
	"unsafe"

	"github.com/vishvananda/netlink"

	"golang.org/x/sys/unix"
)

// seqpacketPair returns a nonblocking socket pair whose reads take one
// message each, as a TAP's take one frame each.
func seqpacketPair(t *testing.T) (r, w int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// ringPair returns a ring on the reading end of a seqpacketPair.
func ringPair(t *testing.T) (ring *uring, r, w int) {
	t.Helper()
	r, w = seqpacketPair(t)
	ring, err := newURing(r, maxBatch)
	if err != nil {
		t.Fatalf("newURing: %v", err)
	}
	t.Cleanup(ring.close)
	return ring, r, w
}

func TestURingReadsInOrder(t *testing.T) {
	ring, _, w := ringPair(t)
	for i := range 5 {
		if _, err := unix.Write(w, bytes.Repeat([]byte{byte(i)}, 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	bufs := make([][]byte, 8)
	iovs := make([][1]unix.Iovec, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 200)
		iovs[i][0] = iovec(bufs[i])
		ring.queueReadv(iovs[i][:], uint64(i))
	}
	var tags []uint64
	var res []int32
	if err := ring.submit(func(tag uint64, v int32) { tags = append(tags, tag); res = append(res, v) }); err != nil {
		t.Fatalf("submit: %v", err)
	}
	if len(res) != 8 {
		t.Fatalf("%d completions, want 8", len(res))
	}
	for i, v := range res {
		tag := tags[i]
		if i < 5 {
			if int(v) != 100+int(tag) || bufs[tag][0] != byte(tag) {
				t.Errorf("read %d: %d bytes starting %d, want %d bytes of %d", tag, v, bufs[tag][0], 100+tag, tag)
			}
			continue
		}
		if unix.Errno(-v) != unix.EAGAIN {
			t.Errorf("read %d on an empty socket: %d, want -EAGAIN", tag, v)
		}
	}
}

// inPrivateNetns runs f on a thread of its own in a new network namespace,
// which goes with the thread. It needs root (CAP_SYS_ADMIN).
func inPrivateNetns(t *testing.T, f func()) {
	t.Helper()
	if unix.Geteuid() != 0 {
		t.Skip("needs root for a private network namespace (CI runs the unit tests as root)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		f()
	}()
	<-done
}

// TestURingTAP reads frames from a real TAP through the ring: a TAP takes
// nonblocking reads from io_uring, so that batches complete at once.
func TestURingTAP(t *testing.T) {
	inPrivateNetns(t, func() {
		f, err := createVNet("tap0")
		if err != nil {
			t.Errorf("create TAP: %v", err)
			return
		}
		defer f.Close()
		fd := int(f.Fd())
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Error(err)
			return
		}
		ring, err := newURing(fd, maxBatch)
		if err != nil {
			t.Errorf("newURing on a TAP: %v", err)
			return
		}
		defer ring.close()
		ifi, err := net.InterfaceByName("tap0")
		if err != nil {
			t.Error(err)
			return
		}
		if err := setUp(ifi.Index); err != nil {
			t.Error(err)
			return
		}
		ps, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(ps)
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index}
		for i := range 3 {
			frame := make([]byte, 60+i)
			copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x88, 0xb5})
			frame[14] = byte(i)
			if err := unix.Sendto(ps, frame, 0, to); err != nil {
				t.Errorf("send frame %d: %v", i, err)
				return
			}
		}
		r := newBatchReader(ring)
		defer r.release()
		var got []int
		for range 3 {
			frames, _, err := r.read(fd)
			if err != nil {
				t.Errorf("read: %v", err)
				return
			}
			for _, v := range frames {
				got = append(got, v.Size())
				if b := v.AsSlice(); b[14] != byte(len(got)-1) {
					t.Errorf("frame %d carries %d", len(got)-1, b[14])
				}
				v.Release()
			}
		}
		if r.plain != nil {
			t.Error("the TAP's reads did not complete inside io_uring_enter")
		}
		if want := []int{60, 61, 62}; !slices.Equal(got, want) {
			t.Errorf("frame sizes %v, want %v", got, want)
		}
	})
}

// setUp brings link index up.
func setUp(index int) error {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// TestFrameSources reads bursts of every size up to over three batches,
// small frames and 64 KiB ones, through the ring and through readv, and
// checks that every frame arrives once, whole and in order.
func TestFrameSources(t *testing.T) {
	t.Run("ring", func(t *testing.T) {
		ring, r, w := ringPair(t)
		b := newBatchReader(ring)
		defer b.release()
		testFrameSource(t, b, r, w)
		if b.plain != nil {
			t.Error("fell back to readv")
		}
	})
	t.Run("readv", func(t *testing.T) {
		r, w := seqpacketPair(t)
		b := &frameReader{}
		defer b.release()
		testFrameSource(t, b, r, w)
	})
}

func testFrameSource(t *testing.T, b frameSource, r, w int) {
	if err := unix.SetsockoptInt(w, unix.SOL_SOCKET, unix.SO_SNDBUF, 8<<20); err != nil {
		t.Fatal(err)
	}
	seq := 0
	for burst := 1; burst <= 3*maxBatch+1; burst++ {
		var want []int
		for range burst {
			size := 100 + seq%7
			if seq%5 == 0 {
				size = maxFrame // a 64 KiB GSO frame, handed over whole
			}
			msg := make([]byte, vnetHdrLen+size)
			msg[vnetHdrLen] = byte(seq)
			if _, err := unix.Write(w, msg); err != nil {
				t.Fatalf("write frame %d: %v", seq, err)
			}
			want = append(want, size)
			seq++
		}
		var got []int
		for reads := 0; ; reads++ {
			if reads > 2*burst+1 {
				t.Fatalf("burst of %d: still reading after %d batches", burst, reads)
			}
			frames, empty, err := b.read(r)
			if err != nil {
				t.Fatalf("burst of %d: %v", burst, err)
			}
			if br, ok := b.(*batchReader); ok && (br.size < 1 || br.size > maxBatch) {
				t.Fatalf("batch size %d", br.size)
			}
			for _, f := range frames {
				first := seq - burst + len(got)
				if f.Size() != want[len(got)] || f.AsSlice()[0] != byte(first) {
					t.Fatalf("burst of %d: frame %d is %d bytes starting %d, want %d starting %d",
						burst, len(got), f.Size(), f.AsSlice()[0], want[len(got)], byte(first))
				}
				got = append(got, f.Size())
				f.Release()
			}
			if empty {
				break
			}
		}
		if len(got) != burst {
			t.Fatalf("burst of %d: got %d frames", burst, len(got))
		}
	}
}

// TestURingRestricted checks that the ring does nothing but readv on its
// registered file: another operation, or a readv of a file by its number,
// is refused (EACCES), and registering anything more is too.
func TestURingRestricted(t *testing.T) {
	ring, _, w := ringPair(t)
	if _, err := unix.Write(w, make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	iov := []unix.Iovec{iovec(b)}
	for name, sqe := range map[string]uringSQE{
		"writev of the registered file": {opcode: 2 /* IORING_OP_WRITEV */, flags: iosqeFixedFile},
		"readv of fd w by number":       {opcode: ioringOpReadv, fd: int32(w)},
		"nop":                           {opcode: 0 /* IORING_OP_NOP */, flags: iosqeFixedFile},
	} {
		sqe.addr = uint64(uintptr(unsafe.Pointer(&iov[0])))
		sqe.len = 1
		ring.sqes[(*ring.sqTail)&ring.sqMask] = sqe
		ring.queued = 1
		res := int32(0)
		if err := ring.submit(func(_ uint64, v int32) { res = v }); err != nil {
			t.Fatalf("%s: submit: %v", name, err)
		}
		if unix.Errno(-res) != unix.EACCES {
			t.Errorf("%s: result %d, want -EACCES", name, res)
		}
	}
	files := [1]int32{int32(w)}
	if err := ring.register(ioringRegFiles, unsafe.Pointer(&files[0]), 1); err == nil {
		t.Error("registering another file was allowed")
	}
	// The one allowed operation still reads the message written above.
	ring.queueReadv(iov, 7)
	res := int32(0)
	if err := ring.submit(func(_ uint64, v int32) { res = v }); err != nil || res != 64 {
		t.Errorf("readv of the registered file: %d, %v; want 64 bytes", res, err)
	}
}

// TestBatchReaderFallsBack breaks the ring under a batch reader: it reads
// on with readv, and no frame is lost.
func TestBatchReaderFallsBack(t *testing.T) {
	ring, r, w := ringPair(t)
	b := newBatchReader(ring)
	defer b.release()
	for i := range 3 {
		msg := make([]byte, vnetHdrLen+100)
		msg[vnetHdrLen] = byte(i)
		if _, err := unix.Write(w, msg); err != nil {
			t.Fatal(err)
		}
	}
	unix.Close(ring.fd) // io_uring_enter now fails with EBADF
	ring.fd = -1
	var got []byte
	for range 5 {
		frames, _, err := b.read(r)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		for _, f := range frames {
			got = append(got, f.AsSlice()[0])
			f.Release()
		}
	}
	if b.plain == nil {
		t.Error("still on the broken ring")
	}
	if !bytes.Equal(got, []byte{0, 1, 2}) {
		t.Errorf("frames %v, want [0 1 2]", got)
	}
}
