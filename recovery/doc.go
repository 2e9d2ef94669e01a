// Package recovery holds what an operator needs to find and mend sagas that
// did not end well: a consistency check of a sagad database (bbolt's own
// check plus the engine's invariants), and, built on the engine, the tools
// behind the recovery CLI.
//
// The check reads the file through package storage, and parses the stored
// declarative definitions with transport/httpstep, as the daemon does when
// it loads them.
//
// The engine itself resumes unfinished sagas when it starts (engine.Run);
// this package does not drive sagas on its own.
package recovery
