package bolt

import (
	"bytes"

	"github.com/cockroachdb/errors"
	"github.com/sagad/sagad/storage"
)

// Declarative definitions (JSON documents the daemon registers) are stored
// so that a restarted daemon, or the offline CLI, can drive the sagas that
// use them. Every version is kept: a running saga keeps the version it
// started with.
//
//	definitions  name + 0x00 + version -> the definition's JSON
//	             name + 0x00           -> the latest version

var bucketDefinitions = []byte("definitions")

func defKey(name, version string) []byte {
	k := make([]byte, 0, len(name)+1+len(version))
	k = append(k, name...)
	k = append(k, 0)
	return append(k, version...)
}

// DefinitionPut stores a version of a definition and makes it the latest.
// It returns false if that version was stored already (its text is kept).
func (t *Tx) DefinitionPut(name, version string, spec []byte) (bool, error) {
	if name == "" || version == "" || bytes.IndexByte([]byte(name), 0) >= 0 || bytes.IndexByte([]byte(version), 0) >= 0 {
		return false, errors.Newf("storage: definition %q version %q: invalid name or version", name, version)
	}
	b := t.bucket(bucketDefinitions)
	k := defKey(name, version)
	created := b.Get(k) == nil
	if created {
		if err := b.Put(k, spec); err != nil {
			return false, errors.Wrapf(err, "storage: definition %s", name)
		}
	}
	return created, errors.Wrapf(b.Put(defKey(name, ""), []byte(version)), "storage: definition %s: latest", name)
}

// DefinitionGet returns a stored version of a definition; version "" means
// the latest.
func (t *Tx) DefinitionGet(name, version string) (*storage.StoredDefinition, bool) {
	b := t.tx.Bucket(bucketDefinitions)
	if b == nil {
		return nil, false
	}
	latest := string(b.Get(defKey(name, "")))
	if version == "" {
		version = latest
	}
	if version == "" {
		return nil, false
	}
	v := b.Get(defKey(name, version))
	if v == nil {
		return nil, false
	}
	return &storage.StoredDefinition{Name: name, Version: version, Spec: bytes.Clone(v), Latest: version == latest}, true
}

// DefinitionList calls fn with every stored version of every definition,
// by name; each name's latest version comes last among its versions.
func (t *Tx) DefinitionList(fn func(*storage.StoredDefinition) bool) {
	b := t.tx.Bucket(bucketDefinitions)
	if b == nil {
		return
	}
	var name string
	var latest *storage.StoredDefinition
	var pending []*storage.StoredDefinition
	flush := func() bool {
		for _, d := range pending {
			if !fn(d) {
				return false
			}
		}
		pending = pending[:0]
		if latest != nil {
			ok := fn(latest)
			latest = nil
			return ok
		}
		return true
	}
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		i := bytes.IndexByte(k, 0)
		if i < 0 {
			continue
		}
		n, ver := string(k[:i]), string(k[i+1:])
		if n != name {
			if !flush() {
				return
			}
			name = n
		}
		if ver == "" {
			continue // the latest marker: read below
		}
		d := &storage.StoredDefinition{Name: n, Version: ver, Spec: bytes.Clone(v)}
		if string(b.Get(defKey(n, ""))) == ver {
			d.Latest = true
			latest = d
			continue
		}
		pending = append(pending, d)
	}
	flush()
}
