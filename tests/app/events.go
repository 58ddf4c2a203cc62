package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const queryTimeout = 5 * time.Second

type event struct {
	ID        int64      `json:"id"`
	Name      string     `json:"name"`
	StartsAt  time.Time  `json:"starts_at"`
	Lat       float64    `json:"lat"`
	Lon       float64    `json:"lon"`
	Embedding [3]float64 `json:"embedding"`
	// One of these is set, depending on the query.
	DistanceM *float64 `json:"distance_m,omitempty"`
	VectorL2  *float64 `json:"vector_distance,omitempty"`
	Score     *float64 `json:"score,omitempty"`
}

// eventColumns match scanEvent, followed by one computed float column.
const eventColumns = `id, name, starts_at, ST_Y(location::geometry), ST_X(location::geometry), embedding::text`

// GET /events/near?lat=..&lon=..&km=.. : events within km of a point.
func (a *app) eventsNear(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	lat, err1 := floatParam(q.Get("lat"), -90, 90)
	lon, err2 := floatParam(q.Get("lon"), -180, 180)
	km, err3 := floatParam(q.Get("km"), 0, 20000)
	if err1 != nil || err2 != nil || err3 != nil {
		writeError(w, http.StatusBadRequest, "lat (-90..90), lon (-180..180) and km (0..20000) are required numbers")
		return
	}
	const sqlNear = `SELECT ` + eventColumns + `, ST_Distance(location, p.g) AS d
		FROM events, (SELECT ST_SetSRID(ST_MakePoint($2, $1), 4326)::geography AS g) AS p
		WHERE ST_DWithin(location, p.g, $3 * 1000)
		ORDER BY d, id LIMIT 100`
	a.queryEvents(w, r, func(e *event, v float64) { e.DistanceM = &v }, sqlNear, lat, lon, km)
}

// GET /events/similar?v=x,y,z&k=5 : nearest embeddings by L2 distance.
func (a *app) eventsSimilar(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	vec, err := parseVector(q.Get("v"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "v must be three comma-separated numbers")
		return
	}
	k := 5
	if s := q.Get("k"); s != "" {
		if k, err = strconv.Atoi(s); err != nil || k < 1 || k > 100 {
			writeError(w, http.StatusBadRequest, "k must be an integer from 1 to 100")
			return
		}
	}
	// A lone distance in ORDER BY lets the HNSW index serve the query.
	const sqlSimilar = `SELECT ` + eventColumns + `, embedding <-> $1::vector AS d
		FROM events ORDER BY embedding <-> $1::vector LIMIT $2`
	a.queryEvents(w, r, func(e *event, v float64) { e.VectorL2 = &v }, sqlSimilar, vectorText(vec), k)
}

// GET /events/search?q=... : trigram match on the name, whole or word-wise.
func (a *app) eventsSearch(w http.ResponseWriter, r *http.Request) {
	text := strings.TrimSpace(r.URL.Query().Get("q"))
	if text == "" || len(text) > 200 {
		writeError(w, http.StatusBadRequest, "q must hold 1 to 200 characters")
		return
	}
	const sqlSearch = `SELECT ` + eventColumns + `,
		greatest(similarity(name, $1), word_similarity($1, name)) AS d
		FROM events WHERE name % $1 OR $1 <% name
		ORDER BY d DESC, id LIMIT 20`
	a.queryEvents(w, r, func(e *event, v float64) { e.Score = &v }, sqlSearch, text)
}

type createRequest struct {
	Name      string     `json:"name"`
	Lat       *float64   `json:"lat"`
	Lon       *float64   `json:"lon"`
	Embedding []float64  `json:"embedding"`
	StartsAt  *time.Time `json:"starts_at"` // optional, defaults to now
}

// POST /events : insert one event, 201 with the stored row.
func (a *app) createEvent(w http.ResponseWriter, r *http.Request) {
	var req createRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "body must be JSON: name, lat, lon, embedding[3], optional starts_at")
		return
	}
	if msg := req.validate(); msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	if a.db == nil {
		writeError(w, http.StatusServiceUnavailable, "database not configured")
		return
	}
	startsAt := time.Now().UTC()
	if req.StartsAt != nil {
		startsAt = *req.StartsAt
	}
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	e := event{Name: req.Name, Lat: *req.Lat, Lon: *req.Lon}
	copy(e.Embedding[:], req.Embedding)
	err := a.db.QueryRowContext(ctx, `INSERT INTO events (name, starts_at, location, embedding)
		VALUES ($1, $2, ST_SetSRID(ST_MakePoint($4, $3), 4326)::geography, $5::vector)
		RETURNING id, starts_at`,
		req.Name, startsAt, *req.Lat, *req.Lon, vectorText(e.Embedding[:]),
	).Scan(&e.ID, &e.StartsAt)
	if err != nil {
		dbFailure(w, "insert", err)
		return
	}
	writeJSON(w, http.StatusCreated, e)
}

func (c createRequest) validate() string {
	switch {
	case strings.TrimSpace(c.Name) == "" || len(c.Name) > 200:
		return "name must hold 1 to 200 characters"
	case c.Lat == nil || *c.Lat < -90 || *c.Lat > 90:
		return "lat is required, -90..90"
	case c.Lon == nil || *c.Lon < -180 || *c.Lon > 180:
		return "lon is required, -180..180"
	case len(c.Embedding) != 3:
		return "embedding must hold exactly 3 numbers"
	}
	return ""
}

// queryEvents runs a query whose rows are eventColumns plus one float, which
// setExtra stores in the event, and writes {"events": [...]}.
func (a *app) queryEvents(w http.ResponseWriter, r *http.Request, setExtra func(*event, float64), query string, args ...any) {
	if a.db == nil {
		writeError(w, http.StatusServiceUnavailable, "database not configured")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	rows, err := a.db.QueryContext(ctx, query, args...)
	if err != nil {
		dbFailure(w, "query", err)
		return
	}
	defer rows.Close()
	events := []event{}
	for rows.Next() {
		var e event
		var emb string
		var extra float64
		if err := rows.Scan(&e.ID, &e.Name, &e.StartsAt, &e.Lat, &e.Lon, &emb, &extra); err != nil {
			dbFailure(w, "scan", err)
			return
		}
		vec, err := parseVector(strings.Trim(emb, "[]"))
		if err != nil {
			dbFailure(w, "embedding", err)
			return
		}
		copy(e.Embedding[:], vec)
		setExtra(&e, extra)
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		dbFailure(w, "query", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": events})
}

func dbFailure(w http.ResponseWriter, what string, err error) {
	log.Printf("database %s: %v", what, err)
	writeError(w, http.StatusServiceUnavailable, "database error")
}

func floatParam(s string, min, max float64) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < min || f > max {
		return 0, fmt.Errorf("out of range")
	}
	return f, nil
}

// parseVector reads "x,y,z" (three finite numbers).
func parseVector(s string) ([]float64, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 3 {
		return nil, fmt.Errorf("want 3 numbers, got %d", len(parts))
	}
	vec := make([]float64, 3)
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("not a finite number: %q", p)
		}
		vec[i] = f
	}
	return vec, nil
}

// vectorText formats a vector in pgvector's text form, e.g. [0.1,0.2,0.3].
func vectorText(v []float64) string {
	parts := make([]string, len(v))
	for i, f := range v {
		parts[i] = strconv.FormatFloat(f, 'g', -1, 64)
	}
	return "[" + strings.Join(parts, ",") + "]"
}
