package builder

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

// exposeCmd runs EXPOSE: "80", "80/udp", "8000-8002/tcp".
func (s *stageRun) exposeCmd(c *instructions.ExposeCommand) error {
	expand := s.b.exp.Words(s.view())
	cfg := s.c.imageConfig()
	var ports []string
	for _, raw := range c.Ports {
		words, err := expand.Word(raw)
		if err != nil {
			return err
		}
		for _, w := range strings.Fields(words) {
			list, err := parsePorts(w)
			if err != nil {
				return err
			}
			ports = append(ports, list...)
		}
	}
	if cfg.ExposedPorts == nil {
		cfg.ExposedPorts = make(map[string]struct{}, len(ports))
	}
	for _, p := range ports {
		cfg.ExposedPorts[p] = struct{}{}
	}
	s.c.addHistory(cmdText(c))
	return nil
}

// parsePorts expands "port[-port][/proto]" into "port/proto" entries.
func parsePorts(s string) ([]string, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	if !hasProto {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	switch proto {
	case "tcp", "udp", "sctp":
	default:
		return nil, fmt.Errorf("invalid protocol %q in port %q", proto, s)
	}
	lo, hi, isRange := strings.Cut(spec, "-")
	start, err := strconv.ParseUint(lo, 10, 16)
	if err != nil || start == 0 {
		return nil, fmt.Errorf("invalid port %q", s)
	}
	end := start
	if isRange {
		end, err = strconv.ParseUint(hi, 10, 16)
		if err != nil || end < start {
			return nil, fmt.Errorf("invalid port range %q", s)
		}
	}
	var out []string
	for p := start; p <= end; p++ {
		out = append(out, fmt.Sprintf("%d/%s", p, proto))
	}
	return out, nil
}
