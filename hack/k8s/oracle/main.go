// Command probe-oracle runs one gRPC probe with the kubelet's own prober, k8s.io/kubernetes/pkg/probe/grpc,
// and prints what the kubelet would conclude as JSON. The differential tests hold the plugin's check to it.
//
//	probe-oracle -host 127.0.0.1 -port 5000 -service "" -timeout 1s [-tls]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	// The kubelet binary has gzip registered as a gRPC decompressor: `go list -deps k8s.io/kubernetes/cmd/kubelet`
	// (v1.37.2) includes it, imported by go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc/internal/otlpconfig
	// (kubelet tracing). Codecs are process-wide in grpc-go, so the kubelet's probe accepts gzip responses, and so must
	// its oracle.
	_ "google.golang.org/grpc/encoding/gzip"

	"k8s.io/kubernetes/pkg/probe"
	grpcprobe "k8s.io/kubernetes/pkg/probe/grpc"
)

// eventText is the kubelet's Unhealthy event message for a failed probe. pkg/kubelet/prober cannot be linked
// without most of the kubelet, so the format is reproduced from k8s.io/kubernetes v1.37.2:
//   - pkg/kubelet/prober/prober.go:124   "%s probe failed: %s" (probeType, output)
//   - pkg/kubelet/prober/prober_manager.go:162-171  probeType.String(): "Readiness", "Liveness", "Startup"
// Successes record no event.
func eventText(kind string, result probe.Result, output string) string {
	if result == probe.Success {
		return ""
	}
	return fmt.Sprintf("%s probe failed: %s", kind, output)
}

func main() {
	host := flag.String("host", "127.0.0.1", "the pod IP the kubelet dials")
	port := flag.Int("port", 0, "the probe's grpc.port")
	service := flag.String("service", "", "the probe's grpc.service")
	timeout := flag.Duration("timeout", time.Second, "the probe's timeoutSeconds, as a Go duration")
	useTLS := flag.Bool("tls", false, "grpc.mode: TLS (KEP-4939)")
	flag.Parse()

	started := time.Now()
	result, output, err := grpcprobe.New().Probe(*host, *service, *port, *timeout, grpcprobe.ProbeOptions{UseTLS: *useTLS})
	elapsed := time.Since(started)
	doc := map[string]any{
		"result":    string(result),
		"output":    output,
		"elapsedMs": float64(elapsed.Microseconds()) / 1000,
		"events": map[string]string{
			"readiness": eventText("Readiness", result, output),
			"liveness":  eventText("Liveness", result, output),
			"startup":   eventText("Startup", result, output),
		},
	}
	if err != nil {
		doc["error"] = err.Error()
	}
	if e := json.NewEncoder(os.Stdout).Encode(doc); e != nil {
		os.Exit(1)
	}
}
