// Command events-server is the reference application that slipway deploys in
// its tests: a small HTTP API over PostgreSQL with PostGIS, pgvector and
// pg_trgm, plus knobs that make it misbehave on purpose.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Set at build time with -ldflags "-X main.version=...".
var (
	version   = "dev"
	gitCommit = "unknown"
	buildTime = "unknown"
)

func main() {
	healthcheck := flag.Bool("healthcheck", false, "probe /health on 127.0.0.1:$APP_PORT and exit 0 if it answers 200")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	log.SetOutput(os.Stdout)
	log.SetFlags(log.LstdFlags | log.LUTC)

	cfg, err := loadConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "events-server:", err)
		os.Exit(2)
	}
	switch {
	case *showVersion:
		fmt.Printf("%s %s %s\n", version, gitCommit, buildTime)
	case *healthcheck:
		os.Exit(probeHealth(cfg.Port))
	default:
		os.Exit(serve(cfg))
	}
}

// serve runs the HTTP server until a shutdown signal and returns the exit code.
func serve(cfg config) int {
	started := time.Now()
	signals := make(chan os.Signal, 2)
	if cfg.IgnoreSIGTERM {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(signals, os.Interrupt)
		log.Print("IGNORE_SIGTERM=1: SIGTERM is ignored")
	} else {
		signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	}

	if cfg.StartDelay > 0 {
		log.Printf("START_DELAY_MS: waiting %s before listening", cfg.StartDelay)
		select {
		case <-time.After(cfg.StartDelay):
		case sig := <-signals:
			log.Printf("received %s during start delay, exiting", sig)
			return 0
		}
	}

	db, err := openDatabase(cfg)
	if err != nil {
		log.Printf("database: %v", err)
		return 1
	}
	app := &app{cfg: cfg, db: db, started: started}
	srv := &http.Server{
		Addr:              fmt.Sprintf(":%d", cfg.Port),
		Handler:           app.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ListenAndServe() }()
	log.Printf("events-server %s (%s) listening on :%d", version, shortCommit(), cfg.Port)

	select {
	case err := <-serveErr:
		log.Printf("server stopped: %v", err)
		return 1
	case sig := <-signals:
		log.Printf("received %s, shutting down (grace %s)", sig, cfg.ShutdownGrace)
	}
	code := shutdown(srv, cfg.ShutdownGrace, signals)
	if db != nil {
		_ = db.Close()
	}
	log.Print("stopped")
	return code
}

// shutdown stops accepting connections and waits for in-flight requests, up
// to the grace period. A second signal ends the wait at once.
func shutdown(srv *http.Server, grace time.Duration, signals <-chan os.Signal) int {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	go func() {
		select {
		case sig := <-signals:
			log.Printf("received %s again, not waiting any longer", sig)
			cancel()
		case <-ctx.Done():
		}
	}()

	code := 0
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("in-flight requests did not finish in time: %v", err)
		_ = srv.Close()
		code = 1
	}
	return code
}

// probeHealth is the -healthcheck mode used by a Docker HEALTHCHECK.
func probeHealth(port int) int {
	client := &http.Client{Timeout: 4 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/health", port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", errors.Unwrap(err))
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintln(os.Stderr, "healthcheck: status", resp.StatusCode)
		return 1
	}
	return 0
}

func shortCommit() string {
	if len(gitCommit) > 7 {
		return gitCommit[:7]
	}
	return gitCommit
}
