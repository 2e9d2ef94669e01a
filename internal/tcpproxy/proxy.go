// Package tcpproxy is a loopback TCP proxy for fault tests: it forwards
// connections to a target and can cut them all, refuse new ones, let them
// through again, and stall them (stop forwarding what clients send, as a
// broker that blocks a connection stops reading it). It is for tests only.
package tcpproxy

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"

	"github.com/cockroachdb/errors"
)

// Proxy forwards connections from Addr to a target.
type Proxy struct {
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	links map[*link]bool
	// stall is open while Stall holds client bytes back; Resume closes it.
	stall chan struct{}
	// held is closed once a client's bytes were held back since Stall.
	held     chan struct{}
	heldOnce bool
	wg       sync.WaitGroup
}

// link is one forwarded connection: the client's side and the target's.
type link struct {
	client, target net.Conn
	once           sync.Once
	done           chan struct{}
}

func (l *link) close() {
	l.once.Do(func() {
		close(l.done)
		_ = l.client.Close()
		_ = l.target.Close()
	})
}

// Start listens on a free loopback port and forwards to target.
func Start(target string) (*Proxy, error) {
	p := &Proxy{target: target, links: make(map[*link]bool)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Wrap(err, "tcpproxy: listen")
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.addr }

func (p *Proxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			l := &link{client: c, target: up, done: make(chan struct{})}
			p.mu.Lock()
			if p.ln != ln { // cut while dialling
				p.mu.Unlock()
				l.close()
				continue
			}
			p.links[l] = true
			p.mu.Unlock()
			p.wg.Add(2)
			go func() {
				defer p.wg.Done()
				p.upstream(l)
				p.drop(l)
			}()
			go func() {
				defer p.wg.Done()
				_, _ = io.Copy(c, up)
				p.drop(l)
			}()
		}
	}()
}

func (p *Proxy) drop(l *link) {
	l.close()
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// upstream copies what the client sends to the target, holding each chunk
// back while the proxy is stalled.
func (p *Proxy) upstream(l *link) {
	buf := make([]byte, 32<<10)
	for {
		n, err := l.client.Read(buf)
		if n > 0 {
			if !p.waitStall(l) {
				return
			}
			if _, werr := l.target.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// waitStall returns once the proxy is not stalled, or false if l is closed
// meanwhile.
func (p *Proxy) waitStall(l *link) bool {
	p.mu.Lock()
	stall := p.stall
	if stall != nil && !p.heldOnce {
		p.heldOnce = true
		close(p.held)
	}
	p.mu.Unlock()
	if stall == nil {
		return true
	}
	select {
	case <-stall:
		return true
	case <-l.done:
		return false
	}
}

// Stall stops forwarding bytes from clients to the target until Resume,
// without closing anything: a client's writes block once the socket
// buffers are full, as when a broker blocks a connection (a memory or disk
// alarm) and stops reading it. The target's bytes still reach the clients.
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == nil {
		p.stall, p.held, p.heldOnce = make(chan struct{}), make(chan struct{}), false
	}
}

// Held returns a channel that is closed once bytes from a client have been
// held back since the last Stall: a client has written to a stalled
// connection. It is nil when the proxy is not stalled.
func (p *Proxy) Held() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall == nil {
		return nil
	}
	return p.held
}

// Resume forwards the bytes held back by Stall, and all later ones.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stall != nil {
		close(p.stall)
		p.stall = nil
	}
}

// Cut closes every forwarded connection and refuses new ones until
// Restore: to a client, the broker is gone.
func (p *Proxy) Cut() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	for l := range p.links {
		l.close()
	}
	clear(p.links)
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
}

// Restore accepts connections again, on the same address.
func (p *Proxy) Restore() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		return errors.Wrapf(err, "tcpproxy: listen again on %s", p.addr)
	}
	p.serve(ln)
	return nil
}

// Close cuts everything and waits for the proxy's goroutines.
func (p *Proxy) Close() {
	p.Cut()
	p.wg.Wait()
}

// ForURL starts a proxy to the host of rawURL (a broker's, a database's),
// closed when the test ends, and returns it with the same URL aimed at the
// proxy: what connects through it, the test can cut off.
func ForURL(t testing.TB, rawURL string) (*Proxy, string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	via := *u
	via.Host = p.Addr()
	return p, via.String()
}
