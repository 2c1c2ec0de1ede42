// Renders Ollama chat templates with Go's text/template the way Ollama executes them: the
// template parsed with missingkey=zero and a json function, run on .System (every system
// message, joined by blank lines) and .Messages (consecutive messages of one role merged with a
// blank line, tool messages kept apart). Reads {"template", "cases": [{"messages": [...]}]} on
// stdin, writes the renders as a JSON list of strings on stdout.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Input struct {
	Template string `json:"template"`
	Cases    []struct {
		Messages []Message `json:"messages"`
	} `json:"cases"`
}

func merge(messages []Message) (string, []*Message) {
	var systems []string
	var merged []*Message
	for i := range messages {
		m := messages[i]
		if m.Role == "system" {
			systems = append(systems, m.Content)
		}
		if n := len(merged); n > 0 && merged[n-1].Role == m.Role && m.Role != "tool" {
			merged[n-1].Content += "\n\n" + m.Content
			continue
		}
		merged = append(merged, &m)
	}
	return strings.Join(systems, "\n\n"), merged
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fmt.Fprintln(os.Stderr, "reading input:", err)
		os.Exit(2)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(in.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, "parsing the template:", err)
		os.Exit(2)
	}
	out := []string{}
	for _, c := range in.Cases {
		system, messages := merge(c.Messages)
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"System": system, "Messages": messages, "Tools": nil, "Response": ""}); err != nil {
			fmt.Fprintln(os.Stderr, "rendering:", err)
			os.Exit(2)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
