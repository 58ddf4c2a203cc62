package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"regexp"
)

var fileVarName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*_FILE$`)

// secretDigest answers the SHA-256 of the file named by the environment variable
// ?var=NAME_FILE, so a test can check that a secret arrived byte for byte without the
// value ever leaving the container.
func (a *app) secretDigest(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("var")
	if !fileVarName.MatchString(name) {
		writeError(w, http.StatusBadRequest, "var must name an environment variable ending in _FILE")
		return
	}
	path := os.Getenv(name)
	if path == "" {
		writeError(w, http.StatusNotFound, name+" is not set")
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "cannot read the file named by "+name)
		return
	}
	sum := sha256.Sum256(raw)
	writeJSON(w, http.StatusOK, map[string]any{
		"var":    name,
		"bytes":  len(raw),
		"sha256": hex.EncodeToString(sum[:]),
	})
}
