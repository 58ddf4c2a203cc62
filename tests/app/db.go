package main

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/lib/pq"
)

// openDatabase builds a connection pool; it does not connect yet. With no
// DATABASE_HOST the server still runs and its health check reports the
// database as not configured.
func openDatabase(cfg config) (*sql.DB, error) {
	if cfg.DBHost == "" {
		return nil, nil
	}
	dsn := strings.Join([]string{
		dsnPair("host", cfg.DBHost),
		dsnPair("port", strconv.Itoa(cfg.DBPort)),
		dsnPair("dbname", cfg.DBName),
		dsnPair("user", cfg.DBUser),
		dsnPair("password", cfg.DBPassword),
		dsnPair("sslmode", cfg.DBSSLMode),
		dsnPair("connect_timeout", "5"),
		dsnPair("application_name", "events-server"),
	}, " ")
	connector, err := pq.NewConnector(dsn)
	if err != nil {
		// The message of a DSN parse error could echo a value; keep it out.
		return nil, errors.New("invalid database settings")
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(10)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return db, nil
}

// dsnPair quotes a value for the key=value connection string of lib/pq.
func dsnPair(key, value string) string {
	v := strings.ReplaceAll(value, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return key + "='" + v + "'"
}

// withTimeout runs fn with a deadline and gives up on it when the deadline
// passes, even if the driver is stuck reading from a frozen server.
func withTimeout(parent context.Context, d time.Duration, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(parent, d)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
