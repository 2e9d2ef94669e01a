package httpapi_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sagad/sagad/recovery"
	"github.com/sagad/sagad/transport/httpapi"
)

// fill starts n sagas with an input of size bytes each, so that the
// database is at least n*size bytes.
func fill(tb testing.TB, a *api, n, size int) {
	tb.Helper()
	p := newParticipant(tb)
	a.put(tb, "fill", fmt.Sprintf(`{"steps":[{"name":"s","action":{"url":"%s/s"}}]}`, p.URL()), http.StatusCreated)
	for range n {
		requireStatus(tb, a.run(tb, "fill", map[string]string{"pad": strings.Repeat("x", size)}), "completed")
	}
}

// requireEmpty fails unless dir has no entries.
func requireEmpty(tb testing.TB, dir, what string) {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("read %s: %v", dir, err)
	}
	for _, e := range entries {
		tb.Errorf("%s: %s holds %s, want nothing left", what, dir, e.Name())
	}
}

// TestBackup: GET /v1/backup sends a database sagad opens, and leaves no
// temporary file; HEAD answers with the size GET sends, without a copy.
func TestBackup(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	a := newAPI(t, func(c *httpapi.Config) { c.BackupDir = tmp })
	fill(t, a, 4, 64<<10)

	head, _ := a.send(t, http.MethodHead, "/v1/backup", "", nil)
	if head.StatusCode != http.StatusOK {
		t.Fatalf("HEAD /v1/backup answered %d, want 200", head.StatusCode)
	}
	resp, body := a.send(t, http.MethodGet, "/v1/backup", "", nil)
	if resp.StatusCode != http.StatusOK || mediaType(resp) != "application/octet-stream" {
		t.Fatalf("GET /v1/backup answered %d %q, want 200 application/octet-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if want := strconv.Itoa(len(body)); head.Header.Get("Content-Length") != want || head.ContentLength != int64(len(body)) {
		t.Errorf("HEAD Content-Length %q, want %s, the size of the copy GET sent", head.Header.Get("Content-Length"), want)
	}
	for _, h := range []string{"Content-Type", "Content-Disposition"} {
		if head.Header.Get(h) != resp.Header.Get(h) {
			t.Errorf("HEAD %s %q, GET %q: want the same", h, head.Header.Get(h), resp.Header.Get(h))
		}
	}
	requireEmpty(t, tmp, "after GET /v1/backup")
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(copyPath, body, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := recovery.CheckFile(copyPath); err != nil {
		t.Errorf("the backup does not pass the consistency check: %v", err)
	}

	// HEAD takes no copy: it answers where a copy cannot be written.
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b := newAPI(t, func(c *httpapi.Config) { c.BackupDir = notDir })
	head, _ = b.send(t, http.MethodHead, "/v1/backup", "", nil)
	if head.StatusCode != http.StatusOK || head.ContentLength <= 0 {
		t.Errorf("HEAD /v1/backup with a BackupDir where no file can be created answered %d, Content-Length %d; want 200 with the size",
			head.StatusCode, head.ContentLength)
	}
}

// TestBackupCutsOffStalledClient: a client that stops reading a backup is
// cut off after Config.BackupStallTimeout, and the temporary copy is
// removed; it does not stay on disk until the client goes away.
func TestBackupCutsOffStalledClient(t *testing.T) {
	t.Parallel()
	const stall = 200 * time.Millisecond
	tmp := t.TempDir()
	closed := make(chan string, 64) // remote addresses of connections the server closed
	a := newAPIWith(t, options{
		server: func(c *httpapi.Config) { c.BackupDir, c.BackupStallTimeout = tmp, stall },
		httpServer: func(s *http.Server) {
			// Small socket buffers, so that a client that reads nothing
			// blocks the server's writes within a few KiB.
			s.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetWriteBuffer(4 << 10)
				}
				return ctx
			}
			s.ConnState = func(c net.Conn, st http.ConnState) {
				if st == http.StateClosed {
					select {
					case closed <- c.RemoteAddr().String():
					default: // never block the server; the test needs only its own connection's
					}
				}
			}
		},
	})
	fill(t, a, 8, 128<<10) // 1 MiB and more: far more than the sockets hold

	d := net.Dialer{Timeout: patience}
	conn, err := d.DialContext(ctx(t), "tcp", a.ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.(*net.TCPConn).SetReadBuffer(4 << 10)
	start := time.Now()
	if _, err := fmt.Fprintf(conn, "GET /v1/backup HTTP/1.1\r\nHost: sagad\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Read nothing until the server gives up.
	deadline := time.After(patience)
	for waiting := true; waiting; {
		select {
		case addr := <-closed:
			waiting = addr != conn.LocalAddr().String()
		case <-deadline:
			t.Fatalf("the server still sends the backup to a client that has read nothing for %s; want it cut off after %s",
				patience, stall)
		}
	}
	if took := time.Since(start); took < stall {
		t.Errorf("the server cut the client off after %s, before the stall timeout %s", took, stall)
	}
	requireEmpty(t, tmp, "after a cut-off backup")

	// The client gets what the sockets held, then the end: a short body.
	_ = conn.SetReadDeadline(time.Now().Add(patience))
	got, _ := io.ReadAll(conn)
	head, _, _ := bytes.Cut(got, []byte("\r\n\r\n"))
	var size int
	for line := range strings.SplitSeq(string(head), "\r\n") {
		if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
			size, _ = strconv.Atoi(v)
		}
	}
	if !bytes.HasPrefix(got, []byte("HTTP/1.1 200 ")) || size < 1<<20 || len(got)-len(head)-4 >= size {
		t.Errorf("the cut-off client got %d bytes after a %d-byte header %.40q with Content-Length %d; want a 200 of a database of 1 MiB or more, cut short",
			len(got)-len(head)-4, len(head), head, size)
	}
}
