package main

import (
	"github.com/sagad/sagad/engine"
	"github.com/sagad/sagad/storage/bolt"
)

// openEngine opens the bbolt file at path with the options bo and returns
// an engine on it, which owns the file from then on.
func openEngine(path string, bo bolt.Options, o engine.Options) (*engine.Engine, error) {
	bo.Clock = o.Clock
	db, err := bolt.Open(path, &bo)
	if err != nil {
		return nil, err
	}
	eng, err := engine.New(db, o)
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return eng, nil
}
