package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/lib/pq"
)

const dbCheckTimeout = 2 * time.Second

type check struct {
	Status  string `json:"status"` // pass, warn or fail
	Message string `json:"message"`
}

type healthReport struct {
	Status        string           `json:"status"` // healthy, degraded or unhealthy
	Version       string           `json:"version"`
	GitCommit     string           `json:"git_commit"`
	Timestamp     string           `json:"timestamp"`
	SchemaVersion int64            `json:"schema_version"`
	Checks        map[string]check `json:"checks"`
}

func (a *app) health(w http.ResponseWriter, r *http.Request) {
	rep := healthReport{
		Version:   version,
		GitCommit: gitCommit,
		Timestamp: time.Now().UTC().Format(time.RFC3339),
		Checks:    map[string]check{},
	}
	rep.Checks["database"] = a.checkDatabase(r.Context())
	if rep.Checks["database"].Status == "pass" {
		rep.SchemaVersion, rep.Checks["migrations"] = a.checkMigrations(r.Context())
	} else {
		rep.Checks["migrations"] = check{"fail", "not checked: database unavailable"}
	}
	if msg := a.injectedFailure(); msg != "" {
		rep.Checks["injected"] = check{"fail", msg}
	}
	rep.Status = overall(rep.Checks)
	code := http.StatusOK
	if rep.Status == "unhealthy" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rep)
}

// injectedFailure reports the test knobs FAIL_HEALTH, FAIL_HEALTH_FILE and
// FAIL_HEALTH_AFTER_MS.
func (a *app) injectedFailure() string {
	if a.cfg.FailHealth {
		return "FAIL_HEALTH=1"
	}
	if a.cfg.FailFile != "" {
		if _, err := os.Stat(a.cfg.FailFile); err == nil {
			return fmt.Sprintf("FAIL_HEALTH_FILE %s exists", a.cfg.FailFile)
		}
	}
	if a.cfg.FailAfter > 0 && time.Since(a.started) >= a.cfg.FailAfter {
		return fmt.Sprintf("FAIL_HEALTH_AFTER_MS=%d elapsed", a.cfg.FailAfter.Milliseconds())
	}
	return ""
}

func overall(checks map[string]check) string {
	status := "healthy"
	for _, c := range checks {
		switch c.Status {
		case "fail":
			return "unhealthy"
		case "warn":
			status = "degraded"
		}
	}
	return status
}

func (a *app) checkDatabase(ctx context.Context) check {
	if a.db == nil {
		return check{"fail", "not configured (DATABASE_HOST is empty)"}
	}
	start := time.Now()
	err := withTimeout(ctx, dbCheckTimeout, func(ctx context.Context) error {
		var one int
		return a.db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	})
	if err != nil {
		return check{"fail", describeDBError(err)}
	}
	return check{"pass", fmt.Sprintf("SELECT 1 in %dms", time.Since(start).Milliseconds())}
}

// checkMigrations reads schema_migrations (version, dirty). Several rows are
// accepted: the highest version counts and any dirty row fails the check.
func (a *app) checkMigrations(ctx context.Context) (int64, check) {
	var ver sql.NullInt64
	var dirty bool
	err := withTimeout(ctx, dbCheckTimeout, func(ctx context.Context) error {
		return a.db.QueryRowContext(ctx,
			"SELECT max(version), coalesce(bool_or(dirty), false) FROM schema_migrations",
		).Scan(&ver, &dirty)
	})
	var pqErr *pq.Error
	switch {
	case errors.As(err, &pqErr) && pqErr.Code == "42P01":
		return 0, check{"fail", "schema_migrations table is missing"}
	case err != nil:
		return 0, check{"fail", describeDBError(err)}
	case !ver.Valid:
		return 0, check{"fail", "schema_migrations is empty"}
	case dirty:
		return ver.Int64, check{"fail", fmt.Sprintf("version %d is dirty", ver.Int64)}
	}
	return ver.Int64, check{"pass", fmt.Sprintf("version %d", ver.Int64)}
}

func describeDBError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Sprintf("no answer within %s", dbCheckTimeout)
	}
	return err.Error()
}
