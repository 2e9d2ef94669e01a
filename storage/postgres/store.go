package postgres

import (
	"context"
	"strings"

	"github.com/cockroachdb/errors"
	"github.com/jackc/pgx/v5"

	"github.com/sagad/sagad/storage"
)

// BreakerGet implements storage.Store.
func (db *DB) BreakerGet(ctx context.Context, name string) ([]byte, error) {
	var state []byte
	err := db.pool.QueryRow(ctx, "SELECT state FROM "+db.t("breakers")+" WHERE name = $1", name).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	return state, db.read(err, "breaker %s", name)
}

// BreakerPut implements storage.Store.
func (db *DB) BreakerPut(ctx context.Context, name string, state []byte) error {
	_, err := db.pool.Exec(ctx, "INSERT INTO "+db.t("breakers")+" (name, state) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state",
		name, state)
	return db.read(err, "breaker %s", name)
}

// DefinitionPut implements storage.Store.
func (db *DB) DefinitionPut(ctx context.Context, name, version string, spec []byte) (bool, error) {
	if name == "" || version == "" || strings.IndexByte(name, 0) >= 0 || strings.IndexByte(version, 0) >= 0 {
		return false, errors.Newf("postgres: definition %q version %q: invalid name or version", name, version)
	}
	if spec == nil {
		spec = []byte{}
	}
	var created bool
	// xmax is 0 for a row this statement inserted, not for one it updated.
	err := db.pool.QueryRow(ctx, "INSERT INTO "+db.t("definitions")+" (name, version, spec, put) VALUES ($1, $2, $3, nextval('"+
		strings.ReplaceAll(db.t("definitions_put"), "'", "''")+"')) ON CONFLICT (name, version) DO UPDATE SET put = EXCLUDED.put RETURNING xmax = 0",
		name, version, spec).Scan(&created)
	return created, db.read(err, "definition %s", name)
}

// DefinitionGet implements storage.Store.
func (db *DB) DefinitionGet(ctx context.Context, name, version string) (*storage.StoredDefinition, bool, error) {
	row := db.pool.QueryRow(ctx, "SELECT d.version, d.spec, d.put = (SELECT max(put) FROM "+db.t("definitions")+" WHERE name = $1) FROM "+
		db.t("definitions")+" d WHERE d.name = $1 AND ($2 = '' OR d.version = $2) ORDER BY d.put DESC LIMIT 1", name, version)
	sd := &storage.StoredDefinition{Name: name}
	err := row.Scan(&sd.Version, &sd.Spec, &sd.Latest)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, db.read(err, "definition %s", name)
	}
	return sd, true, nil
}

// DefinitionList implements storage.Store.
func (db *DB) DefinitionList(ctx context.Context) ([]*storage.StoredDefinition, error) {
	rows, err := db.pool.Query(ctx, "SELECT name, version, spec, put = max(put) OVER (PARTITION BY name) FROM "+db.t("definitions")+" ORDER BY name, put")
	if err != nil {
		return nil, db.read(err, "list definitions")
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (*storage.StoredDefinition, error) {
		sd := new(storage.StoredDefinition)
		err := row.Scan(&sd.Name, &sd.Version, &sd.Spec, &sd.Latest)
		return sd, err
	})
	return out, db.read(err, "list definitions")
}
