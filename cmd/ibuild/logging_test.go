package main

import (
	"bytes"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestLogFormatter(t *testing.T) {
	var b bytes.Buffer
	l := logrus.New()
	l.SetOutput(&b)
	l.SetFormatter(logFormatter{})
	l.SetLevel(logrus.WarnLevel)
	l.Warnf("Error running newuidmap: %s", "exit status 1")
	l.WithField("path", "/usr/bin/newuidmap").Error("should be setuid\x1b[2J")
	l.Info("not shown")
	want := "ibuild: warning: Error running newuidmap: exit status 1\n" +
		"ibuild: error: should be setuid\\x1b[2J (path: /usr/bin/newuidmap)\n"
	if b.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", b.String(), want)
	}
}
