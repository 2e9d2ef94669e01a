package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// completionWords are the commands, their subcommands and their flags, as
// the shells complete them.
var completionWords = map[string][]string{
	"serve":       {"--db", "--listen", "--token", "--amqp-url", "--exchange", "--definitions", "--concurrency", "--shutdown-grace", "--retention", "--node", "--pprof", "--log-level", "--log-format", "--max-connections", "--max-step-output", "--max-saga-data", "--metrics-step-labels"},
	"check":       {"--db", "--addr", "--token", "--json"},
	"bench":       {"-n", "-c", "-steps", "-fail", "-dir", "-db", "-addr", "-token", "-nosync", "-cpuprofile", "-memprofile", "-trace"},
	"sagas":       {"list", "show", "retry", "abort", "resolve", "pause", "resume", "complete"},
	"outbox":      {"list", "stats", "requeue", "discard"},
	"definitions": {"list", "show", "put", "diagram"},
	"backup":      {"--db", "--addr", "--token", "--to"},
	"compact":     {"--db", "--json"},
	"recover":     {"--db", "--addr", "--token", "--timeout", "--json", "--max-step-output", "--max-saga-data"},
	"migrate":     {"--db", "--print", "--json"},
	"version":     {"--json"},
	"completion":  {"bash", "zsh"},
}

// targetFlags are the flags every operator subcommand takes.
var targetFlagWords = []string{"--db", "--addr", "--token", "--json"}

type completionCommand struct {
	stdout, stderr io.Writer
}

func (c *completionCommand) run(args []string) int {
	if len(args) != 1 || (args[0] != "bash" && args[0] != "zsh") {
		fmt.Fprint(c.stderr, `Usage: sagad completion bash|zsh

Prints a completion script for the shell: commands, subcommands and flags.

Example:
  source <(sagad completion bash)          # or save it in /etc/bash_completion.d/sagad
  source <(sagad completion zsh)           # in ~/.zshrc
`)
		if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
			return exitOK
		}
		return exitUsage
	}
	if args[0] == "zsh" {
		fmt.Fprintln(c.stdout, "# zsh completion for sagad: bash's, through bashcompinit")
		fmt.Fprintln(c.stdout, "autoload -U +X bashcompinit && bashcompinit")
	}
	fmt.Fprint(c.stdout, bashCompletion())
	return exitOK
}

// bashCompletion is the bash completion script.
func bashCompletion() string {
	cmds := make([]string, 0, len(completionWords))
	for k := range completionWords {
		cmds = append(cmds, k)
	}
	sort.Strings(cmds)
	var b strings.Builder
	b.WriteString("# bash completion for sagad\n_sagad() {\n")
	b.WriteString("  local cur=${COMP_WORDS[COMP_CWORD]} cmd=${COMP_WORDS[1]} sub=${COMP_WORDS[2]}\n")
	fmt.Fprintf(&b, "  if [ \"$COMP_CWORD\" -eq 1 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", strings.Join(cmds, " "))
	b.WriteString("  case $cmd in\n")
	for _, cmd := range cmds {
		words := completionWords[cmd]
		switch cmd {
		case "sagas", "outbox", "definitions":
			fmt.Fprintf(&b, "    %s) if [ \"$COMP_CWORD\" -eq 2 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); else COMPREPLY=($(compgen -W %q -- \"$cur\")); fi ;;\n",
				cmd, strings.Join(words, " "), strings.Join(append(targetFlagWords, subFlags(cmd)...), " "))
		default:
			fmt.Fprintf(&b, "    %s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", cmd, strings.Join(words, " "))
		}
	}
	b.WriteString("  esac\n}\ncomplete -o default -F _sagad sagad\n")
	return b.String()
}

// subFlags are the flags of a command's subcommands beyond the target's.
func subFlags(cmd string) []string {
	switch cmd {
	case "sagas":
		return []string{"--status", "--definition", "--since", "--limit", "--all", "--cursor", "--wait", "--note", "--by"}
	case "outbox":
		return []string{"--status", "--limit", "--all", "--cursor", "--all-not-produced"}
	}
	return nil
}
