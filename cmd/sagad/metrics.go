package main

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/saga"
	"github.com/sagad/sagad/storage"
	"github.com/sagad/sagad/transport/rabbitmq"
)

// metrics are the daemon's Prometheus metrics. The engine and the relay
// report through hooks; gauges of stored state are read at scrape time.
type metrics struct {
	reg      *prometheus.Registry
	entered  *prometheus.CounterVec
	attempts *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	breakers *prometheus.GaugeVec
	relayOut *prometheus.CounterVec
	replies  *prometheus.CounterVec
	// steps bounds the step label of the attempt series; nil: the
	// series have no step label.
	steps *stepLabels
}

// newMetrics makes the daemon's metrics. With withSteps the step attempt
// series also have a step label, for the steps of the registered
// definitions only (see stepLabels); without, they are by definition,
// phase and outcome, a few dozen series per definition whatever its steps.
func newMetrics(withSteps bool) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.entered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagad_saga_status_changes_total",
		Help: "Sagas that entered a status, by definition and status."}, []string{"definition", "status"})
	attemptLabels, latencyLabels, by := []string{"definition", "phase", "outcome"}, []string{"definition", "phase"}, "definition"
	if withSteps {
		m.steps = newStepLabels()
		attemptLabels, latencyLabels, by = []string{"definition", "step", "phase", "outcome"}, []string{"definition", "step", "phase"}, "definition, step"
	}
	m.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagad_step_attempts_total",
		Help: "Finished step attempts, by " + by + ", phase and outcome (success, retry: failed and retried, failure: failed for good)."},
		attemptLabels)
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sagad_step_attempt_duration_seconds",
		Help: "Duration of step attempts, by " + by + " and phase.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)},
		latencyLabels)
	m.breakers = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sagad_breaker_state",
		Help: "Circuit breaker state: 0 closed, 1 half-open, 2 open."}, []string{"breaker"})
	m.relayOut = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagad_relay_events_total",
		Help: "Outbox events the relay handled, by outcome (published, retried, not_produced)."}, []string{"outcome"})
	m.replies = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sagad_replies_total",
		Help: "Participants' replies to commands, by result (applied; ignored: late or delivered twice; rejected: malformed or for no saga)."},
		[]string{"result"})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.entered, m.attempts, m.latency, m.breakers, m.relayOut, m.replies)
	return m
}

var breakerValue = map[string]float64{"closed": 0, "half-open": 1, "open": 2}

// engineHooks reports the engine's events.
func (m *metrics) engineHooks() engine.Hooks {
	return engine.Hooks{
		SagaStatusChanged: func(c engine.StatusChange) { m.entered.WithLabelValues(c.Definition, string(c.To)).Inc() },
		AttemptFinished: func(a engine.AttemptInfo) {
			outcome := "success"
			switch {
			case a.Err != nil && a.Retry:
				outcome = "retry"
			case a.Err != nil:
				outcome = "failure"
			}
			if m.steps == nil {
				m.attempts.WithLabelValues(a.Definition, string(a.Phase), outcome).Inc()
				m.latency.WithLabelValues(a.Definition, string(a.Phase)).Observe(a.Duration.Seconds())
				return
			}
			m.steps.observe(m, a, outcome)
		},
		BreakerStateChanged: func(name, from, to string) { m.breakers.WithLabelValues(name).Set(breakerValue[to]) },
	}
}

// relayHooks reports the relay's events. Its counters exist, at zero, from
// the start.
func (m *metrics) relayHooks() rabbitmq.Hooks {
	for _, outcome := range []string{"published", "retried", "not_produced"} {
		m.relayOut.WithLabelValues(outcome)
	}
	return rabbitmq.Hooks{
		Published:   func(n int) { m.relayOut.WithLabelValues("published").Add(float64(n)) },
		Retried:     func(*storage.OutboxEvent, error) { m.relayOut.WithLabelValues("retried").Inc() },
		NotProduced: func(*storage.OutboxEvent, error) { m.relayOut.WithLabelValues("not_produced").Inc() },
	}
}

// replyHooks counts the reply consumer's results.
func (m *metrics) replyHooks(h rabbitmq.Hooks) rabbitmq.Hooks {
	for _, result := range []string{"applied", "ignored", "rejected"} {
		m.replies.WithLabelValues(result)
	}
	h.Reply = func(result string) { m.replies.WithLabelValues(result).Inc() }
	return h
}

// watch registers the gauges read from the engine (and relay, if any) at
// scrape time.
func (m *metrics) watch(eng *engine.Engine, relay *rabbitmq.Relay) {
	if m.steps != nil {
		m.steps.setSource(eng.Definitions)
	}
	for _, b := range eng.Breakers() {
		m.breakers.WithLabelValues(b.Name).Set(breakerValue[b.State])
	}
	m.reg.MustRegister(&stateCollector{m: m, eng: eng, relay: relay})
}

var (
	sagasDesc  = prometheus.NewDesc("sagad_sagas", "Stored sagas by status.", []string{"status"}, nil)
	outboxDesc = prometheus.NewDesc("sagad_outbox_events", "Outbox events by status (new: waiting to be published).",
		[]string{"status"}, nil)
	oldestDesc = prometheus.NewDesc("sagad_outbox_oldest_new_age_seconds",
		"Age of the oldest outbox event not yet published; 0 when there is none.", nil, nil)
	commitsDesc = prometheus.NewDesc("sagad_storage_commits_total",
		"Transactions the committer wrote to disk, each with its syncs.", nil, nil)
	writesDesc = prometheus.NewDesc("sagad_storage_writes_total",
		"Writes (saga transitions and the like) the commits carried; per commit, the group commit's batch size.", nil, nil)
	commitTimeDesc = prometheus.NewDesc("sagad_storage_commit_seconds_total",
		"Time spent committing, syncs included; its rate is the share of time the committer is busy.", nil, nil)
	pagesDesc = prometheus.NewDesc("sagad_storage_pages_written_total",
		"Page writes of the database file (bbolt's count: one per page or run of overflow pages, meta pages included).", nil, nil)
	relayUpDesc      = prometheus.NewDesc("sagad_relay_connected", "1 while the relay is connected to the broker.", nil, nil)
	relayBlockedDesc = prometheus.NewDesc("sagad_relay_blocked",
		"1 while the broker blocks the relay's connection (a memory or disk alarm): events wait in the outbox.", nil, nil)
	inflightDesc = prometheus.NewDesc("sagad_relay_in_flight", "Messages published and not yet confirmed.", nil, nil)
	waitingDesc  = prometheus.NewDesc("sagad_steps_waiting",
		"Steps waiting for their participant's answer (a command's reply, an HTTP 202's callback); read at most every 15 s.", nil, nil)
	waitOldestDesc = prometheus.NewDesc("sagad_step_wait_oldest_seconds",
		"How long the longest wait for a participant's answer has lasted; 0 when none waits.", nil, nil)
)

// waitsEvery is how often a scrape reads the waiting steps again: the
// count reads every saga that waits.
const waitsEvery = 15 * time.Second

// stateCollector reads stored state when scraped.
type stateCollector struct {
	m     *metrics
	eng   *engine.Engine
	relay *rabbitmq.Relay

	mu      sync.Mutex
	waits   engine.Waits
	waitsAt time.Time // when waits was read; zero: never
}

// readWaits returns the waiting steps, read again if the last reading is
// older than waitsEvery.
func (c *stateCollector) readWaits() (engine.Waits, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waitsAt.IsZero() || time.Since(c.waitsAt) >= waitsEvery {
		w, err := c.eng.Waits(context.Background())
		if err != nil {
			return engine.Waits{}, false
		}
		c.waits, c.waitsAt = w, time.Now()
	}
	return c.waits, true
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sagasDesc
	ch <- outboxDesc
	ch <- oldestDesc
	ch <- commitsDesc
	ch <- writesDesc
	ch <- commitTimeDesc
	ch <- pagesDesc
	ch <- waitingDesc
	ch <- waitOldestDesc
	if c.relay != nil {
		ch <- relayUpDesc
		ch <- relayBlockedDesc
		ch <- inflightDesc
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	// The registered definitions' status counters and breakers exist from
	// when they are registered, at zero and closed, not from their first
	// change: a rate or an alert on them needs the series. Made here, they
	// are in the next scrape.
	for _, def := range c.eng.Definitions() {
		for _, st := range saga.Statuses {
			c.m.entered.WithLabelValues(def.Name, string(st))
		}
	}
	for _, b := range c.eng.Breakers() {
		c.m.breakers.WithLabelValues(b.Name).Set(breakerValue[b.State])
	}
	if counts, err := c.eng.Store().SagaCounts(context.Background()); err == nil {
		for st, n := range counts {
			ch <- prometheus.MustNewConstMetric(sagasDesc, prometheus.GaugeValue, float64(n), string(st))
		}
	}
	if w, ok := c.readWaits(); ok {
		ch <- prometheus.MustNewConstMetric(waitingDesc, prometheus.GaugeValue, float64(w.Steps))
		age := 0.0
		if !w.Oldest.IsZero() {
			age = max(time.Since(w.Oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(waitOldestDesc, prometheus.GaugeValue, age)
	}
	if st, err := c.eng.OutboxStats(context.Background()); err == nil {
		ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(st.Counts.New), "new")
		ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(st.Counts.Produced), "produced")
		ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(st.Counts.NotProduced), "not_produced")
		age := 0.0
		if !st.OldestNew.IsZero() {
			age = time.Since(st.OldestNew).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age)
	}
	ds := c.eng.Store().Stats()
	ch <- prometheus.MustNewConstMetric(commitsDesc, prometheus.CounterValue, float64(ds.Commits))
	ch <- prometheus.MustNewConstMetric(writesDesc, prometheus.CounterValue, float64(ds.Writes))
	ch <- prometheus.MustNewConstMetric(commitTimeDesc, prometheus.CounterValue, ds.CommitTime.Seconds())
	ch <- prometheus.MustNewConstMetric(pagesDesc, prometheus.CounterValue, float64(ds.PagesWritten))
	if c.relay != nil {
		s := c.relay.Stats()
		up := 0.0
		if s.Connected {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(relayUpDesc, prometheus.GaugeValue, up)
		blocked := 0.0
		if s.Blocked {
			blocked = 1
		}
		ch <- prometheus.MustNewConstMetric(relayBlockedDesc, prometheus.GaugeValue, blocked)
		ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(s.InFlight))
	}
}

// stepLabels keeps the step label of the attempt series to the steps of
// the latest registered version of each definition: at most saga.MaxSteps
// per definition, however many versions come and go. An attempt of any
// other step (one of an older version, still run by the sagas that started
// with it) is counted with an empty step label, so the definition's totals
// stay whole. When a definition's latest version drops a step, or the
// definition is no longer registered, that step's series are deleted.
type stepLabels struct {
	mu sync.Mutex
	// source lists the latest version of every registered definition (the
	// engine's Definitions); nil until the engine is open.
	source func() []*saga.Definition
	latest map[string]*saga.Definition
	known  map[string]map[string]bool // definition -> its latest version's step names
}

func newStepLabels() *stepLabels {
	return &stepLabels{latest: map[string]*saga.Definition{}, known: map[string]map[string]bool{}}
}

func (s *stepLabels) setSource(source func() []*saga.Definition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.source = source
}

// observe counts an attempt. The lock covers the series update, so that a
// refresh deleting a dropped step's series cannot race with its last
// increment and leave it behind.
func (s *stepLabels) observe(m *metrics, a engine.AttemptInfo, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	step := a.Step
	if !s.known[a.Definition][step] {
		// A step not seen yet: a definition registered since the last
		// look, or a step of an older version. Looking again costs a walk
		// over the registered definitions' latest versions, whose step
		// sets are rebuilt only when a version changed.
		s.refresh(m)
		if !s.known[a.Definition][step] {
			step = ""
		}
	}
	m.attempts.WithLabelValues(a.Definition, step, string(a.Phase), outcome).Inc()
	m.latency.WithLabelValues(a.Definition, step, string(a.Phase)).Observe(a.Duration.Seconds())
}

// refresh reads the registered definitions and deletes the series of the
// steps they no longer have. s.mu is held.
func (s *stepLabels) refresh(m *metrics) {
	if s.source == nil {
		return
	}
	seen := map[string]bool{}
	for _, d := range s.source() {
		seen[d.Name] = true
		if s.latest[d.Name] == d {
			continue
		}
		steps := make(map[string]bool, len(d.Steps))
		for _, st := range d.Steps {
			steps[st.Name] = true
		}
		s.drop(m, d.Name, steps)
		s.latest[d.Name], s.known[d.Name] = d, steps
	}
	for name := range s.latest {
		if !seen[name] {
			s.drop(m, name, nil)
			delete(s.latest, name)
			delete(s.known, name)
		}
	}
}

// drop deletes the series of the definition's steps that are not in keep.
func (s *stepLabels) drop(m *metrics, def string, keep map[string]bool) {
	for step := range s.known[def] {
		if !keep[step] {
			m.attempts.DeletePartialMatch(prometheus.Labels{"definition": def, "step": step})
			m.latency.DeletePartialMatch(prometheus.Labels{"definition": def, "step": step})
		}
	}
}
