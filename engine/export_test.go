package engine

import "github.com/sagad/sagad/saga"

// SetTestHook installs the attempt hook (see testHook). Not safe to call
// while sagas run.
func SetTestHook(h func(point, sagaID, step string, phase saga.Phase)) { testHook = h }

// EncodeError and DecodeError expose the stored error's encoding.
func EncodeError(err error) []byte             { return encodeError(err) }
func DecodeError(enc []byte, msg string) error { return decodeError(enc, msg) }

// SetClaimBusyHook installs a hook called when an operator's change finds
// the saga held by a driver and starts to wait. Not safe to call while
// sagas run.
func SetClaimBusyHook(h func(id string)) { testClaimBusy = h }

// SetAbortHoldHook installs a hook called when Abort is about to wait for
// the transition lock of the saga's driver. Not safe to call while sagas
// run.
func SetAbortHoldHook(h func(id string)) { testAbortHold = h }
