package main

import (
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// maxConnectionsCeiling bounds the default of --max-connections: a saga
// daemon's API has a few clients, each with a few connections; thousands
// of them is a flood, not a workload.
const maxConnectionsCeiling = 4096

// defaultMaxConnections is the default of --max-connections: half the
// process's open-file limit, at most maxConnectionsCeiling. The other half
// stays for what the API's clients must not starve: participant calls, the
// database file, the broker. Go raises the soft limit to the hard one at
// start (since Go 1.19), so this is half of what the process may open.
func defaultMaxConnections() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 {
		return 1024
	}
	return int(max(1, min(rl.Cur/2, maxConnectionsCeiling)))
}

// openFileLimit is the process's soft RLIMIT_NOFILE (0 if unknown).
func openFileLimit() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	return rl.Cur
}

// capReachedQuiet is how long after its warning a full listener stays
// "full" in the log: a flood that drains and refills (idle connections
// are closed by the server's header timeout, and the backlog refills the
// slots) gives one warning and one all-clear, not a pair per cycle.
const capReachedQuiet = time.Minute

// limitListener accepts at most cap connections at a time. Beyond the cap
// Accept waits for one to close, so further clients wait in the kernel's
// listen backlog, where they hold none of this process's descriptors (as
// golang.org/x/net/netutil.LimitListener does; this one also logs).
//
// It logs a warning when the cap is first reached and, once the open
// connections are back to half the cap at least quiet after the warning,
// an all-clear with how many accepts waited meanwhile.
type limitListener struct {
	net.Listener
	sem   chan struct{}
	done  chan struct{}
	close sync.Once
	log   *slog.Logger
	quiet time.Duration

	mu       sync.Mutex
	warnedAt time.Time // zero: the cap has not been reached since the last all-clear
	waited   int       // accepts that waited since the warning
}

func newLimitListener(ln net.Listener, maxConns int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, maxConns), done: make(chan struct{}),
		log: log, quiet: capReachedQuiet}
}

// Accept waits for a free slot, then accepts a connection that frees its
// slot when closed.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	default:
		l.full()
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, l: l}, nil
}

// Close closes the listener and ends an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.close.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// full notes an accept that must wait for a slot.
func (l *limitListener) full() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waited++
	if !l.warnedAt.IsZero() {
		return
	}
	l.warnedAt = time.Now()
	l.log.Warn("API connection cap reached: new connections wait in the listen backlog until one closes",
		"max_connections", cap(l.sem), "hint", "a client is opening connections without reusing them, or --max-connections is too low")
}

// release frees a closed connection's slot.
func (l *limitListener) release() {
	<-l.sem
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.warnedAt.IsZero() || len(l.sem) > cap(l.sem)/2 || time.Since(l.warnedAt) < l.quiet {
		return
	}
	l.log.Info("API connections back under the cap", "open", len(l.sem), "max_connections", cap(l.sem),
		"waited", l.waited, "since", l.warnedAt.Format(time.RFC3339))
	l.warnedAt, l.waited = time.Time{}, 0
}

// limitConn frees its listener's slot once, when first closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

// CloseWrite lets the HTTP server half-close a connection it answers with
// an error, as it does a bare TCP connection.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.l.release)
	return err
}
