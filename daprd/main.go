// Command daprd is statelab's own build of Dapr's runtime sidecar.
//
// Upstream's cmd/daprd links every component behind the "stablecomponents"
// build tag, which drags in hundreds of cloud SDKs and takes a long time to
// compile. The tutorial only needs three state stores, so this main wires
// Dapr's public runtime packages together itself and registers just those.
// Command-line flags are Dapr's own (cmd/daprd/options), so anything that
// launches a stock daprd, such as `dapr run`, can launch this one too.
package main

import (
	"context"
	"fmt"
	"os"

	"go.opencensus.io/stats/view"
	"go.uber.org/automaxprocs/maxprocs"

	inmemory "github.com/dapr/components-contrib/state/in-memory"
	"github.com/dapr/components-contrib/state/redis"
	"github.com/dapr/components-contrib/state/sqlite"

	"github.com/dapr/dapr/cmd/daprd/options"
	"github.com/dapr/dapr/pkg/buildinfo"
	stateLoader "github.com/dapr/dapr/pkg/components/state"
	"github.com/dapr/dapr/pkg/healthz"
	"github.com/dapr/dapr/pkg/metrics"
	"github.com/dapr/dapr/pkg/modes"
	"github.com/dapr/dapr/pkg/runtime"
	"github.com/dapr/dapr/pkg/runtime/registry"
	"github.com/dapr/dapr/pkg/security"
	"github.com/dapr/kit/concurrency"
	"github.com/dapr/kit/logger"
	"github.com/dapr/kit/signals"
)

var (
	log        = logger.NewLogger("dapr.runtime")
	logContrib = logger.NewLogger("dapr.contrib")
)

// The component type names match upstream's, so component YAML written for a
// stock daprd (type: state.redis, state.in-memory, state.sqlite) works here.
func registerComponents() {
	stateLoader.DefaultRegistry.Logger = logContrib
	stateLoader.DefaultRegistry.RegisterComponent(redis.NewRedisStateStore, "redis")
	stateLoader.DefaultRegistry.RegisterComponent(inmemory.NewInMemoryStateStore, "in-memory")
	stateLoader.DefaultRegistry.RegisterComponent(sqlite.NewSQLiteStateStore, "sqlite", "sqlite3")

	// Deliberately no name resolver. Standalone mode asks for "mdns", but
	// that one binds UDP *:5353 and multicasts announcements on every LAN
	// interface, which a loopback-only tutorial sidecar must not do. Without
	// it daprd logs one CREATE_COMPONENT_FAILURE error for "nr (mdns/v1)" at
	// start-up and carries on; only invoking *other* app IDs would need it.
}

func main() {
	// Respect container CPU quotas, as upstream does.
	_, _ = maxprocs.Set()

	opts, err := options.New(os.Args[1:])
	if err != nil {
		log.Fatalf("Failed to parse flags: %v", err)
	}
	if opts.RuntimeVersion {
		fmt.Println(buildinfo.Version()) //nolint:forbidigo
		return
	}
	if opts.BuildInfo {
		fmt.Printf("Version: %s\nGit Commit: %s\nGit Version: %s\n", //nolint:forbidigo
			buildinfo.Version(), buildinfo.Commit(), buildinfo.GitVersion())
		return
	}
	if opts.WaitCommand {
		runtime.WaitUntilDaprOutboundReady(opts.DaprHTTPPort)
		return
	}

	opts.Logger.SetAppID(opts.AppID)
	if err := logger.ApplyOptionsToLoggers(&opts.Logger); err != nil {
		log.Fatal(err)
	}
	log.Infof("Starting Dapr Runtime (statelab build) -- version %s", buildinfo.Version())

	registerComponents()

	// SIGINT/SIGTERM cancel ctx: graceful shutdown. SIGHUP must restart the
	// runtime instead of killing the process, because daprd's hot-reloader
	// sends SIGHUP to itself when a Configuration, HTTPEndpoint or Resiliency
	// file in --resources-path changes. OnHUP hands out a fresh context per
	// SIGHUP and cancels the previous one.
	ctx := signals.Context()
	for runCtx := range signals.OnHUP(ctx) {
		if ctx.Err() != nil {
			break
		}
		if err := run(runCtx, opts); err != nil {
			log.Fatalf("Fatal error from runtime: %s", err)
		}
		if runCtx.Err() == nil {
			// The runtime stopped on its own (e.g. the shutdown API), not
			// because of a signal: exit rather than wait for a SIGHUP.
			break
		}
	}
	log.Info("Daprd shutdown gracefully")
}

func run(ctx context.Context, opts *options.Options) error {
	health := healthz.New()

	// The security provider is needed even without mTLS: with no sentry
	// address and mTLS off it hands out a plain-text handler and never
	// dials anything.
	secProvider, err := security.New(ctx, security.Options{
		SentryAddress:           opts.SentryAddress,
		ControlPlaneTrustDomain: opts.ControlPlaneTrustDomain,
		ControlPlaneNamespace:   opts.ControlPlaneNamespace,
		TrustAnchors:            opts.TrustAnchors,
		AppID:                   opts.AppID,
		MTLSEnabled:             opts.EnableMTLS,
		Mode:                    modes.DaprMode(opts.Mode),
		Healthz:                 health,
		JwtAudiences:            opts.SentryRequestJwtAudiences,
	})
	if err != nil {
		return err
	}

	// The runtime can only be built once the security provider is running,
	// so both go into one runner manager: if either fails, both stop.
	return concurrency.NewRunnerManager(
		secProvider.Run,
		func(ctx context.Context) error {
			sec, err := secProvider.Handler(ctx)
			if err != nil {
				return err
			}
			rt, err := runtime.FromConfig(ctx, runtimeConfig(opts, sec, health))
			if err != nil {
				return err
			}
			return rt.Run(ctx)
		},
	).Run(ctx)
}

// runtimeConfig passes every parsed flag through unchanged, so this binary
// honours the same flags as a stock daprd.
func runtimeConfig(opts *options.Options, sec security.Handler, health healthz.Healthz) *runtime.Config {
	return &runtime.Config{
		AppID:                         opts.AppID,
		ActorsService:                 opts.ActorsService,
		ActorsDisseminationTimeout:    opts.ActorsDisseminationTimeout,
		HotReloadReconcileInterval:    opts.HotReloadReconcileInterval,
		RemindersService:              opts.RemindersService,
		SchedulerAddress:              opts.SchedulerAddress,
		SchedulerStreams:              opts.SchedulerJobStreams,
		AllowedOrigins:                opts.AllowedOrigins,
		ResourcesPath:                 opts.ResourcesPath,
		ComponentsPath:                opts.ComponentsPath,
		ControlPlaneAddress:           opts.ControlPlaneAddress,
		AppProtocol:                   opts.AppProtocol,
		Mode:                          opts.Mode,
		DaprHTTPPort:                  opts.DaprHTTPPort,
		DaprInternalGRPCPort:          opts.DaprInternalGRPCPort,
		DaprInternalGRPCListenAddress: opts.DaprInternalGRPCListenAddress,
		DaprAPIGRPCPort:               opts.DaprAPIGRPCPort,
		DaprAPIListenAddresses:        opts.DaprAPIListenAddresses,
		DaprPublicPort:                opts.DaprPublicPort,
		DaprPublicListenAddress:       opts.DaprPublicListenAddress,
		ApplicationPort:               opts.AppPort,
		ProfilePort:                   opts.ProfilePort,
		EnableProfiling:               opts.EnableProfiling,
		AppMaxConcurrency:             opts.AppMaxConcurrency,
		EnableMTLS:                    opts.EnableMTLS,
		SentryAddress:                 opts.SentryAddress,
		MaxRequestSize:                opts.MaxRequestSize,
		ReadBufferSize:                opts.ReadBufferSize,
		UnixDomainSocket:              opts.UnixDomainSocket,
		DaprGracefulShutdownSeconds:   opts.DaprGracefulShutdownSeconds,
		DaprBlockShutdownDuration:     opts.DaprBlockShutdownDuration,
		DisableBuiltinK8sSecretStore:  opts.DisableBuiltinK8sSecretStore,
		EnableAppHealthCheck:          opts.EnableAppHealthCheck,
		AppHealthCheckPath:            opts.AppHealthCheckPath,
		AppHealthProbeInterval:        opts.AppHealthProbeInterval,
		AppHealthProbeTimeout:         opts.AppHealthProbeTimeout,
		AppHealthThreshold:            opts.AppHealthThreshold,
		AppChannelAddress:             opts.AppChannelAddress,
		EnableAPILogging:              opts.EnableAPILogging,
		Config:                        opts.Config,
		DisableInitEndpoints:          opts.DisableInitEndpoints,
		AppBindingOptionsTimeout:      opts.AppBindingOptionsTimeout,
		AppSSL:                        opts.AppSSL,
		Metrics: metrics.Options{
			Enabled:       opts.Metrics.Enabled(),
			Log:           log,
			Port:          opts.Metrics.Port(),
			ListenAddress: opts.Metrics.ListenAddress(),
			Namespace:     metrics.DefaultMetricNamespace,
			Healthz:       health,
			Meter:         view.NewMeter(),
		},
		// registry.NewOptions starts from each kind's DefaultRegistry, which
		// holds only what registerComponents added.
		Registry: registry.NewOptions(),
		Security: sec,
		Healthz:  health,
	}
}
