package rabbitmq

import "time"

// summaryEvery is how often a failure that keeps happening is summarised in
// the log.
const summaryEvery = 30 * time.Second

// failLog keeps the log readable while something fails over and over (a
// route the broker returns, a broker that does not answer): the first
// failure of a key is logged at once, the ones after it are summarised (how
// many, the last error) at most once per summaryEvery, and the first success
// after them once.
type failLog struct {
	keys map[string]*failRun
}

// failRun is one key's failures since it last worked.
type failRun struct {
	since, logged time.Time
	total         int // failures since it last worked
	unlogged      int // failures since the last line about it
	last          error
}

// failNote says what to log about a failure.
type failNote struct {
	first bool          // the key was working until now
	count int           // failures the line covers
	since time.Duration // how long the key has been failing
	last  error
}

// fail records a failure of key at now. It reports whether to log it and
// what: the first failure, or a summary of those since the last line.
func (l *failLog) fail(key string, now time.Time, err error) (failNote, bool) {
	if l.keys == nil {
		l.keys = make(map[string]*failRun)
	}
	run := l.keys[key]
	if run == nil {
		l.keys[key] = &failRun{since: now, logged: now, total: 1, last: err}
		return failNote{first: true, count: 1, last: err}, true
	}
	run.total++
	run.unlogged++
	run.last = err
	if now.Sub(run.logged) < summaryEvery {
		return failNote{}, false
	}
	n := failNote{count: run.unlogged, since: now.Sub(run.since), last: err}
	run.logged, run.unlogged = now, 0
	return n, true
}

// ok records that key worked at now. When it was failing, it reports how
// many failures the run had and how long it lasted, to log once.
func (l *failLog) ok(key string, now time.Time) (failNote, bool) {
	run := l.keys[key]
	if run == nil {
		return failNote{}, false
	}
	delete(l.keys, key)
	return failNote{count: run.total, since: now.Sub(run.since), last: run.last}, true
}
