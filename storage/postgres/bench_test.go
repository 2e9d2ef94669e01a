package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/internal/pgtest"
	"github.com/sagad/sagad/internal/sagaload"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/steps"
	"github.com/sagad/sagad/storage/postgres"
)

// BenchmarkSaga runs the engine on PostgreSQL: 3-step sagas of no-op
// steps, one in ten failing at its last step and compensating the other
// two, at several concurrencies. It reports sagas/s, the Start-to-finished
// latency (p50, p99), the store's commits per saga and PostgreSQL's
// (pg_stat_database's xact_commit, reads included), and the CPU per saga of
// this process and of PostgreSQL's processes together:
//
//	go test ./storage/postgres -run '^$' -bench BenchmarkSaga -benchtime 20000x
func BenchmarkSaga(b *testing.B) {
	for _, c := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("c=%d", c), func(b *testing.B) { benchSagas(b, c) })
	}
}

func benchSagas(b *testing.B, conc int) {
	url := pgtest.URL(b)
	schema := pgtest.Schema(b, url)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := postgres.Open(ctx, url, &postgres.Options{Schema: schema})
	if err != nil {
		b.Fatal(err)
	}
	eng, err := engine.New(db, engine.Options{Concurrency: max(conc, 1024), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	fail := func(_ context.Context, c *saga.Call) (json.RawMessage, error) {
		var in struct{ Fail bool }
		if err := c.DecodeInput(&in); err != nil {
			return nil, err
		}
		if in.Fail {
			return nil, saga.Permanent(errors.New("declined"))
		}
		return nil, nil
	}
	def := &saga.Definition{Name: "bench", Steps: []saga.Step{
		{Name: "one", Action: steps.Noop, Compensation: steps.Noop},
		{Name: "two", Action: steps.Noop, Compensation: steps.Noop},
		{Name: "three", Action: fail},
	}}
	if err := eng.Register(def); err != nil {
		b.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = eng.Run(ctx) }()
	defer func() {
		cancel()
		<-runDone
		_ = eng.Close()
	}()

	commits0 := xactCommits(b, url, db)
	b.ResetTimer()
	pg0 := postgresCPU()
	r := sagaload.Run(ctx, b, eng, conc, b.N, "bench", func(i int) (any, saga.Status) {
		if i%10 == 9 {
			return map[string]bool{"fail": true}, saga.StatusCompensated
		}
		return map[string]bool{"fail": false}, saga.StatusCompleted
	})
	pg := postgresCPU() - pg0
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(n/r.Elapsed.Seconds(), "sagas/s")
	b.ReportMetric(float64(r.Quantile(0.5))/1e6, "p50-ms")
	b.ReportMetric(float64(r.Quantile(0.99))/1e6, "p99-ms")
	cs := eng.Store().Stats()
	b.ReportMetric(float64(cs.Commits)/n, "commits/saga")
	if cs.Commits > 0 {
		b.ReportMetric(float64(cs.Writes)/float64(cs.Commits), "writes/commit")
	}
	b.ReportMetric(float64(xactCommits(b, url, db)-commits0)/n, "pg-xacts/saga")
	b.ReportMetric(float64(r.CPU.Microseconds())/n, "cpu-us/saga")
	if pg0 >= 0 {
		b.ReportMetric(float64((r.CPU+pg).Microseconds())/n, "cpu+pg-us/saga")
	}
}

// xactCommits reads PostgreSQL's count of committed transactions in the
// benchmark's database, once the store's connections have reported theirs
// (a backend reports at most every second, or after 10 s idle).
func xactCommits(b *testing.B, url string, db *postgres.DB) int64 {
	b.Helper()
	ctx := context.Background()
	conns := db.Pool().AcquireAllIdle(ctx)
	for _, c := range conns {
		if _, err := c.Exec(ctx, "SELECT pg_stat_force_next_flush()"); err != nil {
			b.Fatal(err)
		}
		c.Release()
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	// The statistics are a snapshot per transaction: clear it first.
	if _, err := conn.Exec(ctx, "SELECT pg_stat_clear_snapshot()"); err != nil {
		b.Fatal(err)
	}
	var n int64
	if err := conn.QueryRow(ctx, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// postgresCPU sums the CPU time of the machine's postgres processes (a
// local server), or returns -1 when it cannot tell.
func postgresCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	found := false
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open || s[open+1:close] != "postgres" {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 13 {
			continue
		}
		// Fields after the name: utime and stime are the 12th and 13th.
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		st, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 == nil && err2 == nil {
			ticks += u + st
			found = true
		}
	}
	if !found {
		return -1
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}
