package saga

// Status is the state of a saga instance.
//
//	running ──────────────► completed
//	   │ (step failed for good, deadline, abort)
//	   ▼
//	compensating ─────────► compensated
//	   │ (a compensation failed for good)
//	   ▼
//	failed (needs an operator: retry or resolve)
//	   │ (an operator handled it by hand)
//	   ▼
//	resolved
//
// An operator may pause a running or compensating saga (paused: no attempt
// starts until it is resumed) and resume it in the status it had.
type Status string

// Saga statuses.
const (
	// StatusRunning: steps are being run forward (or wait for their next attempt).
	StatusRunning Status = "running"
	// StatusCompensating: the saga is undoing its succeeded steps in reverse order.
	StatusCompensating Status = "compensating"
	// StatusCompleted: every step succeeded. Final.
	StatusCompleted Status = "completed"
	// StatusCompensated: every succeeded step was compensated. Final.
	StatusCompensated Status = "compensated"
	// StatusFailed: a compensation failed for good. The saga stops and waits for
	// an operator, who can retry the compensation or resolve the saga by hand.
	StatusFailed Status = "failed"
	// StatusResolved: a failed saga that an operator handled by hand and
	// marked so, with a note (engine.Resolve). Final; nothing is undone.
	StatusResolved Status = "resolved"
	// StatusPaused: an operator paused the saga (engine.Pause); no attempt
	// starts until it is resumed, in the status it had. Retry times and the
	// deadline keep counting meanwhile. Not final.
	StatusPaused Status = "paused"
)

// Statuses lists every saga status, in the order of the state machine.
var Statuses = []Status{StatusRunning, StatusCompensating, StatusCompleted, StatusCompensated, StatusFailed, StatusResolved, StatusPaused}

// Finished reports whether no more work is scheduled for a saga in status s.
// A failed saga is finished in that sense, but an operator may restart it.
func (s Status) Finished() bool {
	return s == StatusCompleted || s == StatusCompensated || s == StatusFailed || s == StatusResolved
}

// Valid reports whether s is one of the defined statuses.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// StepStatus is the state of one step of a saga instance.
type StepStatus string

// Step statuses.
const (
	// StepPending: the step has not started.
	StepPending StepStatus = "pending"
	// StepRunning: the step's action (or fallback) is being attempted, or waits
	// for its next attempt.
	StepRunning StepStatus = "running"
	// StepSucceeded: the action (or its fallback) succeeded.
	StepSucceeded StepStatus = "succeeded"
	// StepFailed: the action failed for good and no fallback saved it.
	StepFailed StepStatus = "failed"
	// StepCompensating: the step's compensation is being attempted, or waits
	// for its next attempt.
	StepCompensating StepStatus = "compensating"
	// StepCompensated: the compensation succeeded.
	StepCompensated StepStatus = "compensated"
	// StepSkipped: the step will never run (the saga compensated before it) or
	// it succeeded but has nothing to compensate (no compensation, or it comes
	// after the pivot).
	StepSkipped StepStatus = "skipped"
)
