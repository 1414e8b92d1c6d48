package attest

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"
)

// BuildType is the SLSA buildType of ibuild's provenance: its parameters
// are documented in docs/attestations.md.
const BuildType = "https://github.com/ibuild/ibuild/blob/main/docs/attestations.md#build-type-v1"

// BuilderID is the SLSA builder id of ibuild.
const BuilderID = "https://github.com/ibuild/ibuild"

// Material is a resolved dependency: a base image, a COPY --from image, an
// ADD URL (credentials and query removed).
type Material struct {
	URI    string            `json:"uri"`
	Digest map[string]string `json:"digest"`
}

// Source is where the build's definition came from.
type Source struct {
	// URI is a git remote URL (with #commit), for a context that is a
	// git checkout; "" for a plain directory.
	URI    string            `json:"uri,omitempty"`
	Digest map[string]string `json:"digest,omitempty"`
	// Path is the Dockerfile's path relative to the context.
	Path string `json:"path,omitempty"`
}

// LayerStep says which step made a layer of the image (mode=max).
type LayerStep struct {
	Digest    string `json:"digest"`
	DiffID    string `json:"diffID"`
	CreatedBy string `json:"createdBy"`
}

// BuildInfo is what a provenance statement records about one image of a
// build. Callers put no secret value in it: BuildArgs must already be
// filtered (see SecretName), Secrets and SSH are ids.
type BuildInfo struct {
	BuilderVersion  string
	BuilderPlatform string
	// InvocationID names this build; deterministic under
	// SOURCE_DATE_EPOCH.
	InvocationID string
	// StartedOn and FinishedOn are left out when zero (reproducible builds).
	StartedOn, FinishedOn time.Time
	// Context is the build context's source (git URL and commit).
	Context Source
	// Dockerfile is its path relative to the context and its sha256.
	DockerfilePath   string
	DockerfileDigest string
	// DockerfileSource is the Dockerfile's text (mode=max only).
	DockerfileSource []byte
	Target           string
	Platforms        []string
	// Platform is the image's own platform.
	Platform  string
	BuildArgs map[string]string
	Secrets   []string
	SSH       []string
	NoCache   bool
	Materials []Material
	// Layers says which step made each layer (mode=max only).
	Layers []LayerStep
	// Reproducible is set under SOURCE_DATE_EPOCH.
	Reproducible bool
}

type idRef struct {
	ID string `json:"id"`
}

// request is the build's external parameters as BuildKit's dockerfile
// frontend names them.
type request struct {
	Frontend string            `json:"frontend"`
	Args     map[string]string `json:"args"`
	Secrets  []idRef           `json:"secrets,omitempty"`
	SSH      []idRef           `json:"ssh,omitempty"`
}

func (b *BuildInfo) request() request {
	r := request{Frontend: "dockerfile.v0", Args: map[string]string{}}
	for k, v := range b.BuildArgs {
		r.Args["build-arg:"+k] = v
	}
	if b.Target != "" {
		r.Args["target"] = b.Target
	}
	if b.DockerfilePath != "" {
		r.Args["filename"] = b.DockerfilePath
	}
	if len(b.Platforms) > 0 {
		ps := append([]string(nil), b.Platforms...)
		r.Args["platform"] = join(ps)
	}
	if b.NoCache {
		r.Args["no-cache"] = ""
	}
	for _, s := range sorted(b.Secrets) {
		r.Secrets = append(r.Secrets, idRef{s})
	}
	for _, s := range sorted(b.SSH) {
		r.SSH = append(r.SSH, idRef{s})
	}
	return r
}

type dockerfileParam struct {
	Path   string            `json:"path"`
	Digest map[string]string `json:"digest"`
}

type buildConfig struct {
	Dockerfile *struct {
		Path string `json:"path"`
		Data string `json:"data"`
	} `json:"dockerfile,omitempty"`
	Layers []LayerStep `json:"layers,omitempty"`
}

func (b *BuildInfo) buildConfig() *buildConfig {
	if b.DockerfileSource == nil && len(b.Layers) == 0 {
		return nil
	}
	c := &buildConfig{Layers: b.Layers}
	if b.DockerfileSource != nil {
		c.Dockerfile = &struct {
			Path string `json:"path"`
			Data string `json:"data"`
		}{b.DockerfilePath, string(b.DockerfileSource)}
	}
	return c
}

func digestMap(d string) map[string]string {
	for i := 0; i < len(d); i++ {
		if d[i] == ':' {
			return map[string]string{d[:i]: d[i+1:]}
		}
	}
	return nil
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// ProvenanceV1 is the SLSA v1 provenance predicate of b.
func (b *BuildInfo) ProvenanceV1() ([]byte, error) {
	type builder struct {
		ID      string            `json:"id"`
		Version map[string]string `json:"version,omitempty"`
	}
	type metadata struct {
		InvocationID string     `json:"invocationID"`
		StartedOn    *time.Time `json:"startedOn,omitempty"`
		FinishedOn   *time.Time `json:"finishedOn,omitempty"`
	}
	type ext struct {
		ConfigSource Source          `json:"configSource"`
		Dockerfile   dockerfileParam `json:"dockerfile"`
		Request      request         `json:"request"`
	}
	type internal struct {
		BuilderPlatform string       `json:"builderPlatform"`
		Platform        string       `json:"platform"`
		Reproducible    bool         `json:"reproducible"`
		BuildConfig     *buildConfig `json:"buildConfig,omitempty"`
	}
	cs := b.Context
	cs.Path = b.DockerfilePath
	p := struct {
		BuildDefinition struct {
			BuildType            string     `json:"buildType"`
			ExternalParameters   ext        `json:"externalParameters"`
			InternalParameters   internal   `json:"internalParameters"`
			ResolvedDependencies []Material `json:"resolvedDependencies"`
		} `json:"buildDefinition"`
		RunDetails struct {
			Builder  builder  `json:"builder"`
			Metadata metadata `json:"metadata"`
		} `json:"runDetails"`
	}{}
	p.BuildDefinition.BuildType = BuildType
	p.BuildDefinition.ExternalParameters = ext{ConfigSource: cs,
		Dockerfile: dockerfileParam{Path: b.DockerfilePath, Digest: digestMap(b.DockerfileDigest)}, Request: b.request()}
	p.BuildDefinition.InternalParameters = internal{BuilderPlatform: b.BuilderPlatform, Platform: b.Platform,
		Reproducible: b.Reproducible, BuildConfig: b.buildConfig()}
	p.BuildDefinition.ResolvedDependencies = b.materials()
	p.RunDetails.Builder = builder{ID: BuilderID, Version: map[string]string{"ibuild": b.BuilderVersion}}
	p.RunDetails.Metadata = metadata{InvocationID: b.InvocationID, StartedOn: timePtr(b.StartedOn), FinishedOn: timePtr(b.FinishedOn)}
	return json.Marshal(p)
}

// ProvenanceV02 is the SLSA v0.2 provenance predicate of b.
func (b *BuildInfo) ProvenanceV02() ([]byte, error) {
	type completeness struct {
		Parameters  bool `json:"parameters"`
		Environment bool `json:"environment"`
		Materials   bool `json:"materials"`
	}
	type metadata struct {
		BuildInvocationID string       `json:"buildInvocationID"`
		BuildStartedOn    *time.Time   `json:"buildStartedOn,omitempty"`
		BuildFinishedOn   *time.Time   `json:"buildFinishedOn,omitempty"`
		Completeness      completeness `json:"completeness"`
		Reproducible      bool         `json:"reproducible"`
	}
	type configSource struct {
		URI        string            `json:"uri,omitempty"`
		Digest     map[string]string `json:"digest,omitempty"`
		EntryPoint string            `json:"entryPoint"`
	}
	type invocation struct {
		ConfigSource configSource      `json:"configSource"`
		Parameters   request           `json:"parameters"`
		Environment  map[string]string `json:"environment"`
	}
	cs := configSource{URI: b.Context.URI, Digest: b.Context.Digest, EntryPoint: b.DockerfilePath}
	if cs.URI == "" {
		// No remote source: the Dockerfile's own digest identifies it.
		cs.Digest = digestMap(b.DockerfileDigest)
	}
	p := struct {
		Builder     map[string]string `json:"builder"`
		BuildType   string            `json:"buildType"`
		Invocation  invocation        `json:"invocation"`
		BuildConfig *buildConfig      `json:"buildConfig,omitempty"`
		Metadata    metadata          `json:"metadata"`
		Materials   []Material        `json:"materials"`
	}{
		Builder:   map[string]string{"id": BuilderID + "@" + b.BuilderVersion},
		BuildType: BuildType,
		Invocation: invocation{ConfigSource: cs, Parameters: b.request(),
			Environment: map[string]string{"platform": b.BuilderPlatform, "target-platform": b.Platform}},
		BuildConfig: b.buildConfig(),
		Metadata: metadata{BuildInvocationID: b.InvocationID, BuildStartedOn: timePtr(b.StartedOn),
			BuildFinishedOn: timePtr(b.FinishedOn), Completeness: completeness{Parameters: true, Environment: true},
			Reproducible: b.Reproducible},
		Materials: b.materials(),
	}
	return json.Marshal(p)
}

// Provenance is the provenance statement of b for subjects.
func (b *BuildInfo) Provenance(v SLSAVersion, subjects []Subject) (Statement, error) {
	var data []byte
	var err error
	typ := PredicateSLSA1
	switch v {
	case SLSA1, "":
		data, err = b.ProvenanceV1()
	case SLSA02:
		typ = PredicateSLSA02
		data, err = b.ProvenanceV02()
	default:
		return Statement{}, fmt.Errorf("provenance: unknown SLSA version %q", v)
	}
	if err != nil {
		return Statement{}, err
	}
	return NewStatement(typ, subjects, data), nil
}

// materials are b.Materials sorted by URI, each once.
func (b *BuildInfo) materials() []Material {
	out := []Material{}
	seen := map[string]bool{}
	for _, m := range b.Materials {
		k := m.URI
		for a, d := range m.Digest {
			k += " " + a + ":" + d
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, m)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].URI < out[j].URI })
	return out
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ","
		}
		out += x
	}
	return out
}
