package main

import (
	"database/sql"
	"encoding/json"
	"log"
	"net/http"
	"strconv"
	"time"
)

type app struct {
	cfg     config
	db      *sql.DB // nil when no DATABASE_HOST is set
	started time.Time
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", only("GET", a.health))
	mux.HandleFunc("/version", only("GET", a.version))
	mux.HandleFunc("/sleep", only("GET", a.sleep))
	mux.HandleFunc("/secret-digest", only("GET", a.secretDigest))
	mux.HandleFunc("/events", only("POST", a.createEvent))
	mux.HandleFunc("/events/near", only("GET", a.eventsNear))
	mux.HandleFunc("/events/similar", only("GET", a.eventsSimilar))
	mux.HandleFunc("/events/search", only("GET", a.eventsSearch))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint")
	})
	return withVersionAndLog(mux)
}

// only answers 405 to any other method (GET also allows HEAD).
func only(method string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method == method || (method == "GET" && r.Method == "HEAD") {
			h(w, r)
			return
		}
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, "method not allowed")
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int // 0 until the handler writes
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// withVersionAndLog sets X-App-Version on every response and logs one short
// line per request (never the query string or the body).
func withVersionAndLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w.Header().Set("X-App-Version", version)
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		status := strconv.Itoa(rec.status)
		if rec.status == 0 {
			status = "aborted"
			if r.Context().Err() == nil {
				status = "200"
			}
		}
		log.Printf("%s %s %s %dms", r.Method, r.URL.Path, status, time.Since(start).Milliseconds())
	})
}

func (a *app) version(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{
		"version":    version,
		"git_commit": gitCommit,
		"build_time": buildTime,
	})
}

const maxSleep = 10 * time.Minute

// sleep holds the request open for ?ms=N milliseconds (drain tests).
func (a *app) sleep(w http.ResponseWriter, r *http.Request) {
	ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
	d := time.Duration(ms) * time.Millisecond
	if err != nil || ms < 0 || d > maxSleep {
		writeError(w, http.StatusBadRequest, "ms must be an integer from 0 to 600000")
		return
	}
	select {
	case <-time.After(d):
		writeJSON(w, http.StatusOK, map[string]any{"slept_ms": ms, "version": version})
	case <-r.Context().Done():
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	if err := enc.Encode(body); err != nil {
		log.Printf("writing response: %v", err)
	}
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
