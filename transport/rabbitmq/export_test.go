package rabbitmq

// SetBeforeComplete makes Replies call f with each reply's correlation id
// before it hands the reply to its Completer (a crash test's child blocks
// there to die between a reply's arrival and its commit).
func SetBeforeComplete(f func(correlationID string)) { testBeforeComplete = f }
