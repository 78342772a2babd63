// Command etcd is a minimal etcd server for the project's real control plane: go.etcd.io/etcd/server/v3/embed
// with a data directory and loopback URLs, nothing else. It lives in its own module so that etcd's dependency
// versions never fight Kubernetes'.
//
//	etcd -data-dir DIR -listen-client-urls http://127.0.0.1:2379 -listen-peer-urls http://127.0.0.1:2380
package main

import (
	"flag"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"go.etcd.io/etcd/server/v3/embed"
)

func mustURL(raw string) url.URL {
	u, err := url.Parse(raw)
	if err != nil {
		log.Fatalf("etcd: bad URL %q: %v", raw, err)
	}
	return *u
}

func main() {
	dataDir := flag.String("data-dir", "", "where etcd keeps its data")
	client := flag.String("listen-client-urls", "http://127.0.0.1:2379", "client URL (loopback)")
	peer := flag.String("listen-peer-urls", "http://127.0.0.1:2380", "peer URL (loopback)")
	flag.Parse()
	if *dataDir == "" {
		log.Fatal("etcd: -data-dir is required")
	}

	cfg := embed.NewConfig()
	cfg.Dir = *dataDir
	cfg.Name = "grpcprobe"
	cfg.ListenClientUrls = []url.URL{mustURL(*client)}
	cfg.AdvertiseClientUrls = cfg.ListenClientUrls
	cfg.ListenPeerUrls = []url.URL{mustURL(*peer)}
	cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
	cfg.InitialCluster = cfg.Name + "=" + *peer
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true // a throwaway test cluster: durability is not wanted, speed is

	server, err := embed.StartEtcd(cfg)
	if err != nil {
		log.Fatalf("etcd: %v", err)
	}
	defer server.Close()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	select {
	case <-server.Server.ReadyNotify():
	case sig := <-signals:
		log.Printf("etcd: %v before ready", sig)
		return
	}
	select {
	case err := <-server.Err():
		log.Fatalf("etcd: %v", err)
	case <-signals:
	}
}
