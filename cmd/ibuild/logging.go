package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/ibuild/ibuild/builder/printable"
)

// routeLogrus makes the messages containers/storage logs through logrus's
// standard logger (rootless set-up: newuidmap failures, missing
// /etc/subuid ranges) read as ibuild's own: "ibuild: warning: ...", no
// timestamps or level=... fields, written to w. Debug and info messages
// are dropped. The library never touches logrus: only the command, once,
// in main.
func routeLogrus(w io.Writer) {
	logrus.SetOutput(w)
	logrus.SetLevel(logrus.WarnLevel)
	logrus.SetFormatter(logFormatter{})
}

// logFormatter formats a logrus entry as one ibuild message line.
type logFormatter struct{}

// Format implements logrus.Formatter.
func (logFormatter) Format(e *logrus.Entry) ([]byte, error) {
	var b strings.Builder
	b.WriteString("ibuild: ")
	switch e.Level {
	case logrus.WarnLevel:
		b.WriteString("warning: ")
	case logrus.ErrorLevel, logrus.FatalLevel, logrus.PanicLevel:
		b.WriteString("error: ")
	}
	b.WriteString(strings.TrimRight(e.Message, "\n"))
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		if i == 0 {
			b.WriteString(" (")
		} else {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %v", k, e.Data[k])
		if i == len(keys)-1 {
			b.WriteString(")")
		}
	}
	return []byte(printable.Escape(b.String()) + "\n"), nil
}
