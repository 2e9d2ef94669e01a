package webui_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sagad/sagad/client"
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/httpapi"
	"github.com/sagad/sagad/transport/webui"
)

// site is a daemon's HTTP side, as sagad serve mounts it: the API and the
// UI on one listener, over an engine on a temporary file, and the
// participants its definitions call.
type site struct {
	eng   *engine.Engine
	url   string
	c     *client.Client
	parts *participants
}

// participants answers calls by path: /ok 200, /no 400, /later 202,
// /busy 503; /fixable answers 400 until fixed, then 200; /flaky answers
// 503 to its first two calls of a saga, then 400.
type participants struct {
	fixed atomic.Bool
	mu    sync.Mutex
	calls map[string]int
}

func (p *participants) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.calls[r.Header.Get("X-Saga-Id")+r.URL.Path]++
	n := p.calls[r.Header.Get("X-Saga-Id")+r.URL.Path]
	p.mu.Unlock()
	switch r.URL.Path {
	case "/ok":
		_, _ = io.WriteString(w, `{"ok":true}`)
	case "/later":
		w.WriteHeader(http.StatusAccepted)
	case "/busy":
		w.WriteHeader(http.StatusServiceUnavailable)
	case "/hang":
		select { // until the call's timeout cuts it off
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	case "/fixable":
		if !p.fixed.Load() {
			http.Error(w, "participant broken", http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, `{}`)
	case "/flaky":
		if n <= 2 {
			http.Error(w, "busy, try again", http.StatusServiceUnavailable)
			return
		}
		http.Error(w, "card declined", http.StatusBadRequest)
	default:
		http.Error(w, "no", http.StatusBadRequest)
	}
}

func newSite(t *testing.T, token string) *site {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Traced (nothing exported): the saga page shows the trace id.
	tp := sdktrace.NewTracerProvider()
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	eng, err := engine.Open(filepath.Join(t.TempDir(), "sagad.db"), engine.Options{Logger: quiet, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defs := httpapi.NewDefinitions(eng, nil)
	api, err := httpapi.New(httpapi.Config{Engine: eng, Definitions: defs, Token: token, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = eng.Run(ctx) }()
	mux := http.NewServeMux()
	mux.Handle("/ui/", webui.Handler()) // ServeMux redirects /ui to /ui/
	mux.Handle("/", api)
	srv := httptest.NewServer(mux)
	parts := &participants{calls: map[string]int{}}
	psrv := httptest.NewServer(parts)
	t.Cleanup(func() {
		srv.Close()
		psrv.Close()
		cancel()
		<-done
		_ = eng.Close()
	})
	c, err := client.New(srv.URL, token, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := &site{eng: eng, url: srv.URL, c: c, parts: parts}
	put := func(name, spec string) {
		spec = strings.ReplaceAll(spec, "P/", psrv.URL+"/")
		if _, err := c.PutDefinition(context.Background(), name, []byte(spec)); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
	}
	fast := `"retry": {"max_attempts": 5, "initial_interval": "10ms", "max_interval": "20ms"}`
	put("order", `{"steps": [
		{"name": "reserve", "action": {"url": "P/ok"}, "compensation": {"url": "P/ok"}},
		{"name": "charge", "action": {"url": "P/ok"}, "compensation": {"url": "P/ok"}, "circuit_breaker": {"name": "payments"}},
		{"name": "ship", "action": {"url": "P/ok"}, "fallback": {"url": "P/ok"}, "pivot": true}]}`)
	put("declined", `{"steps": [
		{"name": "reserve", "action": {"url": "P/ok"}, "compensation": {"url": "P/ok"}},
		{"name": "charge", "action": {"url": "P/flaky"}, `+fast+`}]}`)
	put("stuck", `{"steps": [
		{"name": "reserve", "action": {"url": "P/ok"}, "compensation": {"url": "P/fixable", "retry": {"max_attempts": 1}}},
		{"name": "charge", "action": {"url": "P/no"}}]}`)
	put("backoff", `{"steps": [
		{"name": "reserve", "action": {"url": "P/ok"}, "compensation": {"url": "P/ok"}},
		{"name": "charge", "action": {"url": "P/busy"}, "retry": {"max_attempts": 5, "initial_interval": "1h"}}]}`)
	put("announced", `{"steps": [{"name": "one", "action": {"url": "P/ok"}}], "events": {"lifecycle": true}}`)
	put("cutoff", `{"steps": [{"name": "call", "action": {"url": "P/hang", "timeout": "100ms"}, "retry": {"max_attempts": 2, "initial_interval": "10ms"}}]}`)
	put("approval", `{"steps": [{"name": "approve", "action": {"url": "P/later", "timeout": "1h"}}]}`)
	put("undoing", `{"steps": [
		{"name": "reserve", "action": {"url": "P/ok"}, "compensation": {"url": "P/busy", "retry": {"max_attempts": 5, "initial_interval": "1h"}}},
		{"name": "charge", "action": {"url": "P/no"}}]}`)
	return s
}

// run starts a saga and waits for it to end, or (wait false) only starts it.
func (s *site) run(t *testing.T, def string, wait bool) string {
	t.Helper()
	o := client.StartOptions{}
	if wait {
		o.Wait = 20 * time.Second
	}
	st, err := s.c.Start(context.Background(), def, map[string]int{"n": 1}, o)
	if err != nil {
		t.Fatalf("start %s: %v", def, err)
	}
	if wait && (st.Saga == nil || !st.Saga.Finished()) {
		t.Fatalf("saga %s of %s did not end: %+v", st.ID, def, st.Saga)
	}
	return st.ID
}

// browser starts Debian's Chromium headless, with a profile of its own,
// for the test. Without one the test is skipped, unless
// SAGAD_REQUIRE_BROWSER=1 (as in CI).
func browser(t *testing.T) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		msg := "no Chromium: install Debian's chromium (apt-get install chromium) to run the browser tests"
		if os.Getenv("SAGAD_REQUIRE_BROWSER") == "1" {
			t.Fatal("SAGAD_REQUIRE_BROWSER=1: " + msg)
		}
		t.Skip(msg)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", path, err)
	}
	return ctx
}

// tab opens a new tab of the browser for one subtest, closed after it,
// with a deadline for all it does.
func tab(t *testing.T, b context.Context) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b)
	ctx, cancelT := context.WithTimeout(ctx, 30*time.Second)
	t.Cleanup(func() { cancelT(); cancel() })
	return ctx
}

type void = chromedp.Action[chromedp.Void]

// run runs steps in the tab, failing the test at the first error.
func run(t *testing.T, ctx context.Context, steps ...void) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

// value runs an action that returns a value.
func value[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// eval returns the value of a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	return value(t, ctx, chromedp.Evaluate[T](expr))
}

// drop makes a step of an action whose value is not needed.
func drop[T any](a chromedp.Action[T]) void {
	return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := a(ctx, tg)
		return chromedp.Void{}, err
	}
}

// until waits for a JavaScript condition to hold in the page; one that
// throws (an element not drawn yet) does not hold.
func until(cond string) void {
	return drop(chromedp.Poll[bool]("(() => { try { return !!("+cond+"); } catch (e) { return false; } })()",
		chromedp.WithPollingTimeout(15*time.Second)))
}

// css is a selector of the first element that matches.
func css(sel string) chromedp.CSS { return chromedp.CSS(sel) }

// artefact writes a file of the test's artefacts: to SAGAD_TEST_ARTIFACTS,
// or a directory under the system's temporary one.
func artefact(t *testing.T, name string, data []byte) {
	dir := os.Getenv("SAGAD_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sagad-test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("artefact: %s", path)
}

func TestUI(t *testing.T) {
	t.Parallel()
	b := browser(t)
	s := newSite(t, "")
	ctx := context.Background()

	// A saga of every status.
	completed := s.run(t, "order", true)
	compensated := s.run(t, "declined", true)
	failed := s.run(t, "stuck", true)
	resolved := s.run(t, "stuck", true)
	if err := s.c.Resolve(ctx, resolved, "released by hand", "test"); err != nil {
		t.Fatal(err)
	}
	running := s.run(t, "approval", false)
	paused := s.run(t, "approval", false)
	if err := s.c.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	compensating := s.run(t, "undoing", false)
	byStatus := map[string]string{"completed": completed, "compensated": compensated, "failed": failed, "resolved": resolved,
		"running": running, "paused": paused, "compensating": compensating}
	for st, id := range byStatus {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) { // nothing outside the engine signals these
			got, err := s.c.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status == st {
				break
			}
			if got.Finished() || time.Now().After(deadline) {
				t.Fatalf("saga %s is %s, want %s", id, got.Status, st)
			}
		}
	}

	t.Run("list and filters", func(t *testing.T) {
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/"), until(`document.querySelectorAll('#sagas tbody tr').length === 7`))
		// Read in one go: a live refresh may draw the page again between reads.
		seen := eval[map[string][]string](t, tt, `Object.fromEntries([...document.querySelectorAll('#sagas tbody tr')].map((r) =>
			[r.dataset.id, [r.querySelector('.badge').textContent, document.querySelector('button[data-status="' + r.querySelector('.badge').textContent + '"] .n').textContent]]))`)
		for st, id := range byStatus {
			if got := seen[id]; len(got) != 2 || got[0] != st || got[1] != "1" {
				t.Errorf("saga %s: row badge and its status's count %v, want %s and 1", id, got, st)
			}
		}
		if !eval[bool](t, tt, `document.querySelector('.counts li:first-child button').dataset.status === 'failed' &&
			document.querySelector('.counts li:first-child button').classList.contains('failed')`) {
			t.Error("failed sagas are not counted first and marked")
		}
		// Filter by status, then by definition, with the live refresh off
		// (it draws the page again under the test's feet).
		run(t, tt, drop(chromedp.Evaluate[bool](`(sessionStorage.setItem('sagad.live', 'off'), true)`)), chromedp.Navigate(s.url+"/ui/"),
			until(`!document.querySelector('#live').checked`),
			chromedp.Click(css(`button[data-status="failed"]`)),
			until(`location.search === '?status=failed' && document.querySelectorAll('#sagas tbody tr').length === 1`))
		if at := value(t, tt, chromedp.Text(css(`#sagas tbody tr td:nth-child(4)`))); at != "reserve" {
			t.Errorf("the failed saga is stuck at %q, want reserve (its compensation failed)", at)
		}
		pick := func(sel, v string) void {
			return drop(chromedp.Evaluate[bool](`(() => { const s = document.querySelector('` + sel + `'); s.value = '` + v + `';
				s.dispatchEvent(new Event('change')); return true })()`))
		}
		// The keyboard steps through a filter's options: each one applies,
		// and the select keeps the focus.
		// (Keys go to whatever has the focus, as a person's do: the select
		// is drawn anew under them.)
		run(t, tt, chromedp.Focus(css(`#f-status`)), chromedp.KeyEvent(kb.ArrowDown),
			until(`location.search === '?status=running' && document.activeElement && document.activeElement.id === 'f-status'`),
			chromedp.KeyEvent(kb.ArrowDown),
			until(`location.search === '?status=compensating' && document.activeElement && document.activeElement.id === 'f-status'`))
		run(t, tt, pick(`#f-status`, ""), until(`location.search === '' && document.querySelectorAll('#sagas tbody tr').length === 7`),
			pick(`#f-definition`, "approval"),
			until(`location.search === '?definition=approval' && document.querySelectorAll('#sagas tbody tr').length === 2`))
		// Found by id, typed and entered.
		run(t, tt, chromedp.Focus(css(`#f-find`)), chromedp.KeyEvent(completed+kb.Enter),
			until(`document.querySelectorAll('#sagas tbody tr').length === 1 && document.querySelector('#sagas tbody tr').dataset.id === '`+completed+`'`))
		// Live again: the refresh draws the table anew, and keeps the
		// filters and the focus (here on a saga's link).
		run(t, tt, pick(`#f-find`, ""), chromedp.Navigate(s.url+"/ui/?definition=approval"), chromedp.WaitVisible(css(`#sagas`)),
			chromedp.Click(css(`#live`)), until(`document.querySelector('#live').checked`),
			chromedp.Focus(css(`a[href="/ui/sagas/`+running+`"]`)),
			drop(chromedp.Evaluate[bool](`(window.__mark = document.querySelector('#sagas'), true)`)),
			until(`document.querySelector('#sagas') !== window.__mark && location.search === '?definition=approval' &&
				document.querySelector('#f-definition').value === 'approval' && document.querySelectorAll('#sagas tbody tr').length === 2`))
		if focused := eval[string](t, tt, `document.activeElement.getAttribute('href') || document.activeElement.tagName`); focused != "/ui/sagas/"+running {
			t.Errorf("after a live refresh the focus is on %q, want the link it was on", focused)
		}
	})

	t.Run("refresh of a running saga", func(t *testing.T) {
		// One refresh every 2 s, not one more each time (two API calls
		// each), and the focus stays on the bar it was on.
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+running), chromedp.WaitVisible(css(`#timeline`)),
			drop(chromedp.Evaluate[bool](`(window.__calls = 0, window.__fetch = window.fetch,
				window.fetch = (...a) => { window.__calls++; return window.__fetch(...a); }, true)`)))
		time.Sleep(7 * time.Second) // the span the refresh rate is measured over
		if n := eval[int](t, tt, `window.__calls`); n < 4 || n > 8 {
			t.Errorf("%d API calls in 7 s on a running saga's page, want 3 refreshes of two (about 6)", n)
		}
	})

	t.Run("paging", func(t *testing.T) {
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/?limit=3"), drop(chromedp.Evaluate[bool](`(sessionStorage.setItem('sagad.live', 'off'), true)`)),
			chromedp.Navigate(s.url+"/ui/?limit=3"), until(`document.querySelectorAll('#sagas tbody tr').length === 3`))
		want := eval[int](t, tt, `[...document.querySelectorAll('.counts .n')].reduce((a, e) => a + Number(e.textContent), 0)`)
		var seen []string
		var pages [][]string
		for page := 0; ; page++ {
			ids := eval[[]string](t, tt, `[...document.querySelectorAll('#sagas tbody tr')].map((r) => r.dataset.id)`)
			seen = append(seen, ids...)
			pages = append(pages, ids)
			if !eval[bool](t, tt, `!document.querySelector('#next').disabled`) {
				break
			}
			if page > 10 {
				t.Fatal("paging does not end")
			}
			run(t, tt, chromedp.Click(css(`#next`)),
				until(`document.querySelector('#sagas tbody tr') && document.querySelector('#sagas tbody tr').dataset.id !== '`+ids[0]+`'`))
		}
		// Back, then to the first page.
		if len(pages) < 2 {
			t.Fatalf("one page of %d sagas at 3 a page", len(seen))
		}
		prev := pages[len(pages)-2]
		run(t, tt, chromedp.Click(css(`#prev`)), until(`document.querySelector('#sagas tbody tr').dataset.id === '`+prev[0]+`'`))
		if got := eval[[]string](t, tt, `[...document.querySelectorAll('#sagas tbody tr')].map((r) => r.dataset.id)`); strings.Join(got, ",") != strings.Join(prev, ",") {
			t.Errorf("Previous page shows %v, want %v", got, prev)
		}
		run(t, tt, chromedp.Click(css(`#first`)), until(`document.querySelector('#sagas tbody tr').dataset.id === '`+seen[0]+`' && document.querySelector('#first').disabled`))
		uniq := map[string]bool{}
		for _, id := range seen {
			if uniq[id] {
				t.Errorf("saga %s shown twice while paging", id)
			}
			uniq[id] = true
		}
		if len(uniq) != want {
			t.Errorf("paging showed %d sagas, want all %d", len(uniq), want)
		}
	})

	t.Run("timeline", func(t *testing.T) {
		tt := tab(t, b)
		log, err := s.c.Log(ctx, compensated)
		if err != nil {
			t.Fatal(err)
		}
		starts := 0
		for _, e := range log {
			if e.Event == "attempt_started" {
				starts++
			}
		}
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+compensated), chromedp.WaitVisible(css(`#timeline`)))
		bars := eval[int](t, tt, `document.querySelectorAll('#timeline rect.attempt').length`)
		retried := eval[int](t, tt, `document.querySelectorAll('#timeline rect.attempt.retried').length`)
		failedBars := eval[int](t, tt, `document.querySelectorAll('#timeline rect.attempt.failed').length`)
		comp := eval[int](t, tt, `document.querySelectorAll('#timeline rect.attempt[data-phase="compensation"]').length`)
		artefact(t, "ui-saga-timeline.png", value(t, tt, chromedp.FullScreenshot(100)))
		if bars != starts || starts != 5 || retried != 2 || failedBars != 1 || comp != 1 {
			t.Errorf("timeline: %d bars (%d retried, %d failed for good, %d compensations) for %d attempts in the log; want 5: reserve, charge three times, reserve's compensation",
				bars, retried, failedBars, comp, starts)
		}
		// Attempts cut off by their timeout say so, and the wait before
		// the retry shows.
		cut := s.run(t, "cutoff", true)
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+cut), chromedp.WaitVisible(css(`#timeline`)))
		if got := eval[[]string](t, tt, `[...document.querySelectorAll('#timeline rect.attempt')].map((r) => r.dataset.outcome)`); strings.Join(got, ",") != "cut,cut" {
			t.Errorf("attempts cut off by their timeout drawn as %v, want cut,cut", got)
		}
		if n := eval[int](t, tt, `document.querySelectorAll('#timeline line.wait').length`); n != 1 {
			t.Errorf("%d waits before a retry drawn, want 1", n)
		}
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+compensated), chromedp.WaitVisible(css(`#timeline`)))
		// Focusing a bar tells its attempt, duration and error.
		run(t, tt, chromedp.Focus(css(`#timeline rect.attempt.failed`)), chromedp.WaitVisible(css(`#tip`)))
		if tip := value(t, tt, chromedp.Text(css(`#tip`))); !strings.Contains(tip, "charge action attempt 3") || !strings.Contains(tip, "card declined") {
			t.Errorf("tooltip %q: want attempt 3 of charge and its error", tip)
		}
		if got, err := s.c.Get(ctx, compensated); err != nil || got.TraceID == "" ||
			value(t, tt, chromedp.Text(css(`#trace`))) != got.TraceID {
			t.Errorf("the page's trace %q, want the saga's %+v (%v)", value(t, tt, chromedp.Text(css(`#trace`))), got, err)
		}
	})

	t.Run("retry after a fix", func(t *testing.T) {
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+failed), chromedp.WaitVisible(css(`button[data-action="retry"]`)))
		s.parts.fixed.Store(true)
		run(t, tt, chromedp.Click(css(`button[data-action="retry"]`)),
			until(`document.querySelector('#status .badge') && document.querySelector('#status .badge').textContent === 'compensated'`))
		if got, err := s.c.Get(ctx, failed); err != nil || got.Status != "compensated" {
			t.Fatalf("after Retry in the UI: %+v %v", got, err)
		}
	})

	t.Run("definition diagram", func(t *testing.T) {
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/definitions/order"), chromedp.WaitVisible(css(`#diagram`)))
		steps := eval[[]string](t, tt, `[...document.querySelectorAll('#diagram g.step')].map((g) => g.dataset.step)`)
		pivot := eval[int](t, tt, `document.querySelectorAll('#diagram rect.box.pivot').length`)
		comps := eval[int](t, tt, `document.querySelectorAll('#diagram rect.box.comp').length`)
		fallbacks := eval[int](t, tt, `document.querySelectorAll('#diagram rect.box.fallback').length`)
		dashed := eval[int](t, tt, `document.querySelectorAll('#diagram path.edge.comp').length`)
		if strings.Join(steps, ",") != "reserve,charge,ship" || pivot != 1 || comps != 2 || fallbacks != 1 || dashed != 3 {
			t.Errorf("diagram: steps %v, %d pivot, %d compensations, %d fallbacks, %d dashed arrows; want reserve, charge, ship, 1, 2, 1, 3 (two to compensations, undo charge before undo reserve)",
				steps, pivot, comps, fallbacks, dashed)
		}
	})

	t.Run("pause and resume", func(t *testing.T) {
		tt := tab(t, b)
		id := s.run(t, "approval", false)
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+id), chromedp.WaitVisible(css(`button[data-action="pause"]`)),
			chromedp.Click(css(`button[data-action="pause"]`)),
			until(`document.querySelector('#status .badge').textContent === 'paused' && document.querySelector('button[data-action="resume"]')`),
			chromedp.Click(css(`button[data-action="resume"]`)),
			until(`document.querySelector('#status .badge').textContent === 'running' && document.querySelector('button[data-action="pause"]')`))
		if got, err := s.c.Get(ctx, id); err != nil || got.Status != "running" || !got.Steps[0].Waiting {
			t.Fatalf("after Pause and Resume in the UI: %+v %v, want running, waiting for its answer", got, err)
		}
	})

	t.Run("abort and resolve", func(t *testing.T) {
		// The confirmation and the note are the browser's dialogs; the
		// test answers them as a person would.
		tt := tab(t, b)
		id := s.run(t, "backoff", false) // charge waits an hour for its retry
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+id), chromedp.WaitVisible(css(`button[data-action="abort"]`)),
			drop(chromedp.Evaluate[bool](`(window.confirm = (q) => (window.__asked = q, true), true)`)),
			chromedp.Click(css(`button[data-action="abort"]`)),
			until(`document.querySelector('#status .badge').textContent === 'compensated'`))
		if asked := eval[string](t, tt, `window.__asked || ''`); !strings.Contains(asked, "Abort saga "+id) {
			t.Errorf("Abort asked %q, want a confirmation naming the saga", asked)
		}
		s.parts.fixed.Store(false)
		stuck := s.run(t, "stuck", true)
		run(t, tt, chromedp.Navigate(s.url+"/ui/sagas/"+stuck), chromedp.WaitVisible(css(`button[data-action="resolve"]`)),
			drop(chromedp.Evaluate[bool](`(window.prompt = () => 'released the stock by hand', true)`)),
			chromedp.Click(css(`button[data-action="resolve"]`)),
			until(`document.querySelector('#status .badge').textContent === 'resolved'`))
		log, err := s.c.Log(ctx, stuck)
		if err != nil {
			t.Fatal(err)
		}
		noted := false
		for _, e := range log {
			noted = noted || e.Event == "resolved" && strings.Contains(e.Note, "released the stock by hand")
		}
		if !noted {
			t.Errorf("the resolved saga's log %+v has no resolved entry with the note", log)
		}
	})

	t.Run("outbox requeue", func(t *testing.T) {
		// No relay runs here: the events of a saga wait as new. One is
		// marked not_produced, as a relay that gave up on it would.
		id := s.run(t, "announced", true)
		page, err := s.eng.OutboxList(ctx, engine.OutboxListOptions{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var ev *storage.OutboxEvent
		for _, e := range page.Events {
			if e.SagaID.String() == id {
				ev = e
				break
			}
		}
		if ev == nil {
			t.Fatalf("saga %s wrote no event", id)
		}
		if _, err := s.eng.Store().OutboxMark(ctx, nil, []storage.OutboxFailure{{ID: ev.ID, Error: "NO_ROUTE: no queue is bound", Final: true}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/outbox"), chromedp.WaitVisible(css(`#not-produced`)))
		if got := eval[string](t, tt, `document.querySelector('#not-produced tbody tr').textContent`); !strings.Contains(got, ev.ID.String()) || !strings.Contains(got, "NO_ROUTE") {
			t.Errorf("not_produced row %q: want the event and its last error", got)
		}
		run(t, tt, chromedp.Click(css(`button[data-action="requeue"]`)),
			until(`document.querySelector('.msg.info') && document.querySelector('.msg.info').textContent.includes('re-queued') && !document.querySelector('#not-produced')`))
		st, err := s.eng.OutboxStats(ctx)
		if err != nil || st.Counts.NotProduced != 0 {
			t.Errorf("after Requeue: %+v (%v), want no not_produced event", st.Counts, err)
		}
	})

	t.Run("narrow window", func(t *testing.T) {
		// A phone's width: the page does not scroll sideways (wide tables
		// scroll in their own box), and the keyboard reaches the bars.
		tt := tab(t, b)
		run(t, tt, chromedp.EmulateViewport(390, 844), chromedp.Navigate(s.url+"/ui/sagas/"+compensated), chromedp.WaitVisible(css(`#timeline`)))
		if w := eval[int](t, tt, `document.documentElement.scrollWidth - document.documentElement.clientWidth`); w > 0 {
			t.Errorf("the saga page is %dpx wider than a 390px window", w)
		}
		artefact(t, "ui-saga-narrow.png", value(t, tt, chromedp.FullScreenshot(100)))
		run(t, tt, chromedp.Navigate(s.url+"/ui/"), until(`document.querySelectorAll('#sagas tbody tr').length > 0`))
		if w := eval[int](t, tt, `document.documentElement.scrollWidth - document.documentElement.clientWidth`); w > 0 {
			t.Errorf("the list is %dpx wider than a 390px window", w)
		}
	})

	t.Run("not found", func(t *testing.T) {
		tt := tab(t, b)
		run(t, tt, chromedp.Navigate(s.url+"/ui/nothing/here"))
		if h1 := value(t, tt, chromedp.Text(css(`h1`))); h1 != "Not found" {
			t.Errorf("an unknown page shows %q, want the UI's not-found page", h1)
		}
	})
}

// With a token, the UI asks for it; a wrong one is refused with a message,
// the right one opens the page asked for.
func TestUIToken(t *testing.T) {
	t.Parallel()
	b := browser(t)
	s := newSite(t, "s3cret-token")
	tt := tab(t, b)
	run(t, tt, chromedp.Navigate(s.url+"/ui/definitions"), chromedp.WaitVisible(css(`#token`)),
		chromedp.Focus(css(`#token`)), chromedp.KeyEvent("wrong"+kb.Enter), chromedp.WaitVisible(css(`.msg.error`)))
	if msg := value(t, tt, chromedp.Text(css(`.msg.error`))); !strings.Contains(msg, "refused") {
		t.Errorf("a wrong token says %q, want it refused", msg)
	}
	run(t, tt, chromedp.Clear(css(`#token`)), chromedp.Focus(css(`#token`)), chromedp.KeyEvent("s3cret-token"+kb.Enter),
		chromedp.WaitVisible(css(`#definitions`)))
	if n := eval[int](t, tt, `document.querySelectorAll('#definitions tbody tr').length`); n != 8 {
		t.Errorf("after signing in, %d definitions listed, want 8", n)
	}
	if url := value(t, tt, chromedp.Location()); strings.Contains(url, "s3cret") || !strings.HasSuffix(url, "/ui/definitions") {
		t.Errorf("location %q: want the page asked for, and never the token", url)
	}
}

// The handler without a browser: the UI's pages, its assets, its
// not-found page, its headers.
func TestHandler(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(webui.Handler())
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		path, method string
		status       int
		ctype        string
	}{
		{"/ui/", "GET", 200, "text/html"},
		{"/ui/sagas/01J9ZV7K8Q3R4S5T6V7W8X9Y0Z", "GET", 200, "text/html"},
		{"/ui/definitions/order", "GET", 200, "text/html"},
		{"/ui/outbox", "GET", 200, "text/html"},
		{"/ui/nope", "GET", 404, "text/html"},
		{"/ui/sagas/short", "GET", 404, "text/html"},
		{"/ui/assets/app.js", "GET", 200, "text/javascript"},
		{"/ui/assets/app.css", "GET", 200, "text/css"},
		{"/ui/assets/missing.js", "GET", 404, ""},
		{"/ui", "GET", 301, ""},
		{"/ui/", "POST", 405, ""},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.status, tc.ctype)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: Content-Security-Policy %q", tc.path, csp)
		}
	}
	// A browser revalidates what it has: the same ETag is a 304.
	for _, path := range []string{"/ui/assets/app.js", "/ui/"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		tag := resp.Header.Get("ETag")
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		req.Header.Set("If-None-Match", tag)
		again, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = again.Body.Close()
		if tag == "" || again.StatusCode != http.StatusNotModified {
			t.Errorf("%s: ETag %q, revalidated %d, want 304", path, tag, again.StatusCode)
		}
	}
}
