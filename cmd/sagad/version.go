package main

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"

	"github.com/cockroachdb/errors"
)

// versionInfo is what the binary knows of itself, from its build info.
type versionInfo struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Time     string `json:"commit_time,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	Go       string `json:"go"`
}

func readVersion() versionInfo {
	v := versionInfo{Module: "github.com/sagad/sagad", Version: "(unknown)"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Module, v.Version, v.Go = bi.Main.Path, bi.Main.Version, bi.GoVersion
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// printVersion writes the version line (or JSON).
func printVersion(w io.Writer, asJSON bool) {
	v := readVersion()
	if asJSON {
		printJSON(w, v)
		return
	}
	line := fmt.Sprintf("sagad %s", v.Version)
	if v.Commit != "" {
		line += " (commit " + v.Commit
		if v.Modified {
			line += ", modified"
		}
		if v.Time != "" {
			line += ", " + v.Time
		}
		line += ")"
	}
	fmt.Fprintf(w, "%s %s\n", line, v.Go)
}

// parseSince reads a --since value: a Go duration (90m, 1h30m) or a number
// of days (7d).
func parseSince(s string) (time.Duration, error) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		var days int
		if _, err := fmt.Sscanf(n, "%d", &days); err == nil && fmt.Sprint(days) == n && days >= 0 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.Newf("%q is not a duration such as 90m, 12h or 7d", s)
	}
	return d, nil
}

// sinceFlag is a --since flag (see parseSince).
type sinceFlag time.Duration

func (f *sinceFlag) String() string { return time.Duration(*f).String() }

func (f *sinceFlag) Set(s string) error {
	d, err := parseSince(s)
	if err != nil {
		return err
	}
	*f = sinceFlag(d)
	return nil
}
