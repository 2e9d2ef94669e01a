package main

import (
	"fmt"
	"io"
	"runtime/debug"
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
