// Command fakecri is a container runtime that runs nothing: it answers the
// kubelet's CRI RuntimeService and ImageService on a unix socket, pretends
// that every sandbox and container it is asked for is running, and writes
// every CreateContainer request it receives as one JSON line to a record file.
//
// The e2e tests read that file to see exactly what the real kubelet passed on
// from fatia's Allocate answer: environment, mounts, device nodes, CDI device
// names and annotations of each container.
//
// The bookkeeping of sandboxes and containers comes from the fake runtime in
// k8s.io/cri-client/pkg/fake; this file adds what a kubelet needs from a
// runtime beyond that fake (a cgroup driver, images with a size, absolute log
// paths, image filesystem usage) and the recording.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

// recordedMount is one CRI Mount of a created container.
type recordedMount struct {
	ContainerPath string `json:"containerPath"`
	HostPath      string `json:"hostPath"`
	ReadOnly      bool   `json:"readOnly"`
}

// recordedDevice is one CRI Device (a device node) of a created container.
type recordedDevice struct {
	ContainerPath string `json:"containerPath"`
	HostPath      string `json:"hostPath"`
	Permissions   string `json:"permissions"`
}

// recordedContainer is what the kubelet asked for in one CreateContainer call.
type recordedContainer struct {
	Time        string            `json:"time"`
	ContainerID string            `json:"containerId"`
	SandboxID   string            `json:"sandboxId"`
	Pod         string            `json:"pod"`
	Namespace   string            `json:"namespace"`
	PodUID      string            `json:"podUid"`
	Container   string            `json:"container"`
	Attempt     uint32            `json:"attempt"`
	Image       string            `json:"image"`
	Envs        map[string]string `json:"envs"`
	// EnvList keeps the order and any repeated keys exactly as sent.
	EnvList     []string          `json:"envList"`
	Mounts      []recordedMount   `json:"mounts"`
	Devices     []recordedDevice  `json:"devices"`
	CDIDevices  []string          `json:"cdiDevices"`
	Annotations map[string]string `json:"annotations"`
	LogPath     string            `json:"logPath"`
}

// runtime serves the CRI: the embedded fake does the bookkeeping, the methods
// below override what the kubelet needs to behave differently.
type runtime struct {
	*fake.RemoteRuntime

	mu       sync.Mutex
	record   *os.File
	logPaths map[string]string // container ID -> absolute log path
}

func newRuntime(record *os.File, imageSize uint64, imageFsDir string) *runtime {
	r := &runtime{RemoteRuntime: fake.NewFakeRemoteRuntime(), record: record, logPaths: map[string]string{}}
	// The kubelet refuses to create a container whose image reports size 0
	// (CreateContainerConfigError), so every pulled image gets a size.
	r.ImageService.SetFakeImageSize(imageSize)
	// Image filesystem usage: without it the kubelet's image garbage collector
	// and eviction manager log errors every few seconds. The mount point must
	// exist for the kubelet's stat of it.
	r.ImageService.SetFakeFilesystemUsage([]*runtimeapi.FilesystemUsage{{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: imageFsDir},
		UsedBytes:  &runtimeapi.UInt64Value{Value: imageSize},
		InodesUsed: &runtimeapi.UInt64Value{Value: 1},
	}})
	r.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}
	// The kubelet asks the runtime for its cgroup driver and must agree with
	// it; cgroupfs, as the kubelet is configured (no systemd on the machine).
	r.RuntimeService.FakeLinuxConfiguration = &runtimeapi.LinuxRuntimeConfiguration{
		CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS,
	}
	return r
}

// RuntimeConfig answers with the cgroup driver (the fake's own answer is nil
// unless set, which the kubelet reads as "the runtime does not say").
func (r *runtime) RuntimeConfig(ctx context.Context, req *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{Linux: r.RuntimeService.FakeLinuxConfiguration}, nil
}

// CreateContainer records the request, then lets the fake create the container.
func (r *runtime) CreateContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	resp, err := r.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	logPath := absoluteLogPath(req.GetSandboxConfig().GetLogDirectory(), req.GetConfig().GetLogPath())
	if logPath != "" {
		// An empty file where a runtime would write the container's output,
		// so the kubelet's log rotation finds what it looks for.
		if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err == nil {
			if f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				f.Close()
			}
		}
	}
	r.mu.Lock()
	r.logPaths[resp.ContainerId] = logPath
	r.mu.Unlock()
	if err := r.write(recordOf(req, resp.ContainerId, logPath)); err != nil {
		return nil, fmt.Errorf("fakecri: cannot record the container: %w", err)
	}
	return resp, nil
}

// ContainerStatus adds the absolute log path, which the fake leaves empty.
// The kubelet's container log manager cleans up around that path; an empty
// one makes it work in its own working directory.
func (r *runtime) ContainerStatus(ctx context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	resp, err := r.RemoteRuntime.ContainerStatus(ctx, req)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	resp.Status.LogPath = r.logPaths[req.ContainerId]
	r.mu.Unlock()
	return resp, nil
}

// RemoveContainer forgets the log path too.
func (r *runtime) RemoveContainer(ctx context.Context, req *runtimeapi.RemoveContainerRequest) (*runtimeapi.RemoveContainerResponse, error) {
	resp, err := r.RemoteRuntime.RemoveContainer(ctx, req)
	if err == nil {
		r.mu.Lock()
		delete(r.logPaths, req.ContainerId)
		r.mu.Unlock()
	}
	return resp, err
}

func (r *runtime) write(rec recordedContainer) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.record.Write(append(line, '\n')); err != nil {
		return err
	}
	return r.record.Sync()
}

func absoluteLogPath(dir, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, path)
}

func recordOf(req *runtimeapi.CreateContainerRequest, containerID, logPath string) recordedContainer {
	config, sandbox := req.GetConfig(), req.GetSandboxConfig()
	rec := recordedContainer{
		Time:        time.Now().UTC().Format(time.RFC3339Nano),
		ContainerID: containerID,
		SandboxID:   req.GetPodSandboxId(),
		Pod:         sandbox.GetMetadata().GetName(),
		Namespace:   sandbox.GetMetadata().GetNamespace(),
		PodUID:      sandbox.GetMetadata().GetUid(),
		Container:   config.GetMetadata().GetName(),
		Attempt:     config.GetMetadata().GetAttempt(),
		Image:       config.GetImage().GetImage(),
		Envs:        map[string]string{},
		EnvList:     []string{},
		Mounts:      []recordedMount{},
		Devices:     []recordedDevice{},
		CDIDevices:  []string{},
		Annotations: config.GetAnnotations(),
		LogPath:     logPath,
	}
	for _, env := range config.GetEnvs() {
		// The CRI carries values as bytes (1.37); environment values are text.
		value := string(env.GetValue())
		rec.Envs[env.GetKey()] = value
		rec.EnvList = append(rec.EnvList, env.GetKey()+"="+value)
	}
	for _, m := range config.GetMounts() {
		rec.Mounts = append(rec.Mounts, recordedMount{m.GetContainerPath(), m.GetHostPath(), m.GetReadonly()})
	}
	for _, d := range config.GetDevices() {
		rec.Devices = append(rec.Devices, recordedDevice{d.GetContainerPath(), d.GetHostPath(), d.GetPermissions()})
	}
	for _, c := range config.GetCDIDevices() {
		rec.CDIDevices = append(rec.CDIDevices, c.GetName())
	}
	sort.Strings(rec.CDIDevices)
	if rec.Annotations == nil {
		rec.Annotations = map[string]string{}
	}
	return rec
}

func main() {
	listen := flag.String("listen", "", "unix socket path to serve the CRI on")
	recordPath := flag.String("record", "", "file to append one JSON line per CreateContainer to")
	imageSize := flag.Uint64("image-size", 64<<20, "size in bytes reported for every image")
	imageFsDir := flag.String("image-fs-dir", "", "existing directory reported as the image filesystem")
	flag.Parse()
	if *listen == "" || *recordPath == "" || *imageFsDir == "" {
		log.Fatal("fakecri: --listen, --record and --image-fs-dir are required")
	}

	record, err := os.OpenFile(*recordPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Fatalf("fakecri: %v", err)
	}
	if err := os.Remove(*listen); err != nil && !os.IsNotExist(err) {
		log.Fatalf("fakecri: %v", err)
	}
	listener, err := net.Listen("unix", *listen)
	if err != nil {
		log.Fatalf("fakecri: %v", err)
	}

	r := newRuntime(record, *imageSize, *imageFsDir)
	server := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(server, r)
	runtimeapi.RegisterImageServiceServer(server, r)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		server.Stop()
	}()
	log.Printf("fakecri: serving on %s, recording to %s", *listen, *recordPath)
	if err := server.Serve(listener); err != nil {
		log.Fatalf("fakecri: %v", err)
	}
}
