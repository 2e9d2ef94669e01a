// Package recovery holds what an operator needs to find and mend sagas that
// did not end well: a consistency check of a sagad database (bbolt's own
// check plus the engine's invariants), and, built on the engine, the tools
// behind the recovery CLI.
//
// The engine itself resumes unfinished sagas when it starts (engine.Run);
// this package does not drive sagas on its own.
package recovery
