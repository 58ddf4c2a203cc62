package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// config comes from the environment only. The password is read from the file
// named by DATABASE_PASSWORD_FILE and is never printed.
type config struct {
	Port          int
	DBHost        string
	DBPort        int
	DBName        string
	DBUser        string
	DBPassword    string
	DBSSLMode     string
	FailHealth    bool
	FailAfter     time.Duration // zero: never
	FailFile      string        // health fails while this file exists; empty: never
	StartDelay    time.Duration
	IgnoreSIGTERM bool
	ShutdownGrace time.Duration
}

func loadConfig() (config, error) {
	var cfg config
	var err error
	if cfg.Port, err = envInt("APP_PORT", 8080); err != nil {
		return cfg, err
	}
	if cfg.DBPort, err = envInt("DATABASE_PORT", 5432); err != nil {
		return cfg, err
	}
	cfg.DBHost = os.Getenv("DATABASE_HOST")
	cfg.DBName = envString("DATABASE_NAME", "events")
	cfg.DBUser = envString("DATABASE_USER", "events")
	cfg.DBSSLMode = envString("DATABASE_SSLMODE", "disable")
	if path := os.Getenv("DATABASE_PASSWORD_FILE"); path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("DATABASE_PASSWORD_FILE: %w", err)
		}
		cfg.DBPassword = strings.TrimRight(string(raw), "\r\n")
	}
	cfg.FailHealth = os.Getenv("FAIL_HEALTH") == "1"
	cfg.FailFile = os.Getenv("FAIL_HEALTH_FILE")
	cfg.IgnoreSIGTERM = os.Getenv("IGNORE_SIGTERM") == "1"
	if cfg.FailAfter, err = envMillis("FAIL_HEALTH_AFTER_MS", 0); err != nil {
		return cfg, err
	}
	if cfg.StartDelay, err = envMillis("START_DELAY_MS", 0); err != nil {
		return cfg, err
	}
	if cfg.ShutdownGrace, err = envMillis("SHUTDOWN_GRACE_MS", 10000); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func envString(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func envInt(name string, fallback int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return fallback, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%s must be a non-negative integer, got %q", name, v)
	}
	return n, nil
}

func envMillis(name string, fallback int) (time.Duration, error) {
	n, err := envInt(name, fallback)
	return time.Duration(n) * time.Millisecond, err
}
