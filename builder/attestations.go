package builder

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/ibuild/ibuild/builder/attest"
	"github.com/ibuild/ibuild/builder/attest/sbom"
	"github.com/ibuild/ibuild/layers"
)

// materialLog records what a build resolved, for provenance: images by
// manifest digest and ADD URLs by content digest.
type materialLog struct {
	list []attest.Material
}

// recordImage notes that ref resolved to img for platform.
func (b *build) recordImage(ref string, platform v1.Platform, img v1.Image) {
	if img == nil {
		return
	}
	d, err := img.Digest()
	if err != nil {
		return
	}
	name := ref
	if n, err := layers.NormalizeName(ref); err == nil {
		name = n
	}
	p := platform
	uri := attest.ImageSubjects([]string{name}, &p, d)[0].Name
	b.addMaterial(attest.Material{URI: uri, Digest: map[string]string{d.Algorithm: d.Hex}})
}

// recordURL notes that an ADD URL had content digest ("sha256:<hex>").
func (b *build) recordURL(rawURL, digest string) {
	alg, hexd, ok := strings.Cut(digest, ":")
	if !ok {
		return
	}
	b.addMaterial(attest.Material{URI: attest.RedactURL(rawURL), Digest: map[string]string{alg: hexd}})
}

func (b *build) addMaterial(m attest.Material) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.materials.list = append(b.materials.list, m)
}

// attestInput is what attestations are made from.
type attestInput struct {
	builds  []*build
	finals  []*stageRun
	images  []v1.Image
	names   []string
	dfPath  string
	df      []byte
	started time.Time
}

// attestResult makes each platform's attestation statements (SBOM and
// provenance, as opts.Attest asks); nil when none is asked for. The SBOM
// reads the final stage's snapshots already on disk.
func attestResult(ctx context.Context, opts *Options, in attestInput, warn func(string)) ([][]attest.Statement, error) {
	a := opts.Attest
	if !a.Any() {
		return nil, nil
	}
	if opts.Format == FormatDocker {
		warn("--format docker: a docker manifest list cannot hold attestation manifests, so the SBOM and provenance are not attached (use --format oci)")
		return nil, nil
	}
	created := opts.Now().UTC()
	if opts.SourceDateEpoch != nil {
		created = opts.SourceDateEpoch.UTC()
	}
	var info *attest.BuildInfo
	if a.Provenance != nil {
		info = provenanceInfo(opts, in, warn)
	}
	out := make([][]attest.Statement, len(in.images))
	for i, img := range in.images {
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		cf, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		subjects := attest.ImageSubjects(in.names, cf.Platform(), d)
		if a.SBOM != nil {
			stages := []*stageRun{in.finals[i]}
			if a.SBOM.ScanStages {
				for _, s := range in.builds[i].stages {
					if s != in.finals[i] && s.result != nil {
						stages = append(stages, s)
					}
				}
			}
			for k, s := range stages {
				subject := sbom.Subject{Name: "stage " + s.name}
				if k == 0 {
					subject = sbom.Subject{Name: "image", Digest: d.String()}
					if len(in.names) > 0 {
						subject.Name = in.names[0]
					}
				}
				rfs, err := s.RootFS(ctx)
				if err != nil {
					return nil, fmt.Errorf("sbom: %s: %w", s.name, err)
				}
				st, err := sbomStatement(ctx, rfs, s.name, a.SBOM.Format, subject, subjects, created, opts.Attest.BuilderVersion, warn)
				if err != nil {
					return nil, err
				}
				out[i] = append(out[i], st)
			}
		}
		if info != nil {
			pi := *info
			pi.Platform = PlatformString(*cf.Platform())
			pi.Materials = in.builds[i].materials.list
			if a.Provenance.Mode == attest.ModeMax {
				pi.DockerfileSource = in.df
				if pi.Layers, err = layerSteps(img); err != nil {
					return nil, err
				}
			}
			st, err := pi.Provenance(a.Provenance.Version, subjects)
			if err != nil {
				return nil, err
			}
			out[i] = append(out[i], st)
		}
	}
	return out, nil
}

// sbomStatement scans the root file system rfs of what (a stage or
// container name, for messages).
func sbomStatement(ctx context.Context, rfs sbom.FS, what string, format attest.SBOMFormat, subject sbom.Subject, subjects []attest.Subject, created time.Time, version string, warn func(string)) (attest.Statement, error) {
	inv, err := sbom.Scan(ctx, rfs, sbom.Options{})
	if err != nil {
		return attest.Statement{}, fmt.Errorf("sbom: %s: %w", what, err)
	}
	for _, w := range inv.Warnings {
		if warn != nil {
			warn("sbom: " + what + ": " + w)
		}
	}
	o := sbom.DocOptions{Subject: subject, Created: created, Tool: "ibuild-" + version}
	if format == attest.CycloneDX {
		data, err := inv.CycloneDX(o)
		return attest.NewStatement(attest.PredicateCycloneDX, subjects, data), err
	}
	data, err := inv.SPDX(o)
	return attest.NewStatement(attest.PredicateSPDX, subjects, data), err
}

// provenanceInfo is the part of the provenance all platforms share.
func provenanceInfo(opts *Options, in attestInput, warn func(string)) *attest.BuildInfo {
	sum := sha256.Sum256(in.df)
	info := &attest.BuildInfo{
		BuilderVersion:   opts.Attest.BuilderVersion,
		BuilderPlatform:  PlatformString(HostPlatform()),
		Context:          attest.GitSource(opts.ContextDir),
		DockerfilePath:   dockerfileRel(opts, in.dfPath),
		DockerfileDigest: "sha256:" + hex.EncodeToString(sum[:]),
		Target:           opts.Target,
		BuildArgs:        map[string]string{},
		NoCache:          opts.NoCache,
		Reproducible:     opts.SourceDateEpoch != nil,
	}
	for _, p := range opts.Platforms {
		info.Platforms = append(info.Platforms, PlatformString(p))
	}
	var hidden []string
	for k, v := range opts.BuildArgs {
		if attest.SecretName(k) {
			hidden = append(hidden, k)
			continue
		}
		info.BuildArgs[k] = v
	}
	if len(hidden) > 0 {
		sort.Strings(hidden)
		warn(fmt.Sprintf("provenance: build args %s look like secrets (SecretsUsedInArgOrEnv) and are left out of it; pass secrets as build secrets (Options.Secrets)", strings.Join(hidden, ", ")))
	}
	for id := range opts.Secrets {
		info.Secrets = append(info.Secrets, id)
	}
	for id := range opts.SSH {
		info.SSH = append(info.SSH, id)
	}
	if opts.SourceDateEpoch == nil {
		info.StartedOn, info.FinishedOn = in.started, opts.Now()
		var id [16]byte
		_, _ = rand.Read(id[:])
		info.InvocationID = hex.EncodeToString(id[:])
	} else {
		// The same inputs give the same id: no randomness under
		// SOURCE_DATE_EPOCH.
		h := sha256.New()
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00", info.DockerfileDigest, info.Target, strings.Join(info.Platforms, ","), opts.SourceDateEpoch.Unix())
		keys := make([]string, 0, len(info.BuildArgs))
		for k := range info.BuildArgs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(h, "%s=%s\x00", k, info.BuildArgs[k])
		}
		info.InvocationID = hex.EncodeToString(h.Sum(nil)[:16])
	}
	return info
}

// dockerfileRel is the Dockerfile's path relative to the context (its
// base name when outside it): no host path reaches the provenance.
func dockerfileRel(opts *Options, dfPath string) string {
	if opts.DockerfileContent != nil {
		return filepath.Base(dfPath)
	}
	ctxAbs, err1 := filepath.Abs(opts.ContextDir)
	dfAbs, err2 := filepath.Abs(dfPath)
	if err1 == nil && err2 == nil {
		if rel, err := filepath.Rel(ctxAbs, dfAbs); err == nil && !strings.HasPrefix(rel, "..") {
			return filepath.ToSlash(rel)
		}
	}
	return filepath.Base(dfPath)
}

// layerSteps says which history entry (step) made each layer of img.
func layerSteps(img v1.Image) ([]attest.LayerStep, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	var steps []string
	for _, h := range cf.History {
		if !h.EmptyLayer {
			steps = append(steps, h.CreatedBy)
		}
	}
	out := make([]attest.LayerStep, len(m.Layers))
	for i, l := range m.Layers {
		out[i] = attest.LayerStep{Digest: l.Digest.String()}
		if i < len(cf.RootFS.DiffIDs) {
			out[i].DiffID = cf.RootFS.DiffIDs[i].String()
		}
		if len(steps) == len(m.Layers) {
			out[i].CreatedBy = steps[i]
		}
	}
	return out, nil
}

// appendAttestations adds each image's attestation manifest to idx, after
// the images, as BuildKit orders them.
func appendAttestations(idx v1.ImageIndex, images []v1.Image, atts [][]attest.Statement, ociArtifact bool) (v1.ImageIndex, error) {
	for i, img := range images {
		if i >= len(atts) || len(atts[i]) == 0 {
			continue
		}
		var subject v1.Descriptor
		var err error
		if subject.MediaType, err = img.MediaType(); err != nil {
			return nil, err
		}
		if subject.Digest, err = img.Digest(); err != nil {
			return nil, err
		}
		if subject.Size, err = img.Size(); err != nil {
			return nil, err
		}
		att, err := attest.Manifest(subject, atts[i], ociArtifact)
		if err != nil {
			return nil, err
		}
		idx = attest.Append(idx, subject, att)
	}
	return idx, nil
}

// commitSBOM is the index a working container's commit stores when an
// SBOM is asked for: img (the committed image, maybe squashed) and its
// attestation manifest, with an SBOM of scanned's root file system (the
// container's image before squashing: its snapshots are on disk).
func commitSBOM(ctx context.Context, st *layers.Store, scanned, img v1.Image, name string, o CommitOptions, warn func(string)) (v1.ImageIndex, error) {
	if o.Format == FormatDocker {
		return nil, errors.New("SBOM: a docker manifest list cannot hold attestation manifests; commit with FormatOCI")
	}
	dirs, err := st.Snapshots(ctx, scanned, warn)
	if err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	var names []string
	if name != "" {
		names = []string{name}
	}
	created := time.Now().UTC()
	if o.SourceDateEpoch != nil {
		created = o.SourceDateEpoch.UTC()
	}
	subject := sbom.Subject{Name: "image", Digest: d.String()}
	if name != "" {
		subject.Name = name
	}
	stmt, err := sbomStatement(ctx, layers.NewRootFS(dirs), name, o.SBOM.Format, subject,
		attest.ImageSubjects(names, cf.Platform(), d), created, o.Version, warn)
	if err != nil {
		return nil, err
	}
	p := cf.Platform()
	var idx v1.ImageIndex = mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: indexEntry{img}, Descriptor: v1.Descriptor{Platform: p}})
	return appendAttestations(idx, []v1.Image{img}, [][]attest.Statement{{stmt}}, false)
}
