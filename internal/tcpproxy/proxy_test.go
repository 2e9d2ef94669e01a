package tcpproxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
)

// echo serves a loopback echo server until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func roundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("read back %q (%v), want %q", buf, err, msg)
	}
}

// A stalled proxy holds what clients send, without closing anything, and
// forwards it on Resume.
func TestStallHoldsClientBytesUntilResume(t *testing.T) {
	t.Parallel()
	p, err := Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := dial(t, p)
	roundTrip(t, c, "before")
	if p.Held() != nil {
		t.Fatal("Held is not nil before Stall")
	}

	p.Stall()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatalf("write: %v", err)
	}
	select {
	case <-p.Held():
	case <-time.After(5 * time.Second):
		t.Fatal("Held not closed after a client wrote to the stalled proxy")
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(make([]byte, 16)); n != 0 || !isTimeout(err) {
		t.Fatalf("read from a stalled connection: %d bytes, %v; want a timeout (nothing forwarded)", n, err)
	}
	// A client that keeps writing blocks once the buffers are full.
	_ = c.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	big := bytes.Repeat([]byte("x"), 1<<20)
	var werr error
	for range 64 {
		if _, werr = c.Write(big); werr != nil {
			break
		}
	}
	if !isTimeout(werr) {
		t.Fatalf("64 MiB written to a stalled connection: %v, want a write timeout", werr)
	}

	// The echo of what was held arrives after Resume; a fresh connection
	// (the blocked one has a partly written chunk) round-trips again.
	p.Resume()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after Resume read %q (%v), want the held bytes", buf, err)
	}
	roundTrip(t, dial(t, p), "after")
}

// Cut ends stalled connections too.
func TestCutEndsStalledConnections(t *testing.T) {
	t.Parallel()
	p, err := Start(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, p)
	p.Stall()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	<-p.Held()
	done := make(chan struct{})
	go func() {
		p.Close() // waits for the forwarding goroutines, the held one too
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs on a stalled connection")
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a cut connection succeeded")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
