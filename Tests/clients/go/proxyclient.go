// proxyclient performs one request through a proxy with Go's net/http, as a Go program
// configured for a proxy does, and prints one JSON line:
//
//	{"status": int|null, "body": str, "error": str|null, "client_version": str, ...}
//
// Usage:
//
//	proxyclient --proxy URL --url URL [--user U --password P] [--cacert FILE] [--timeout S] [--count N]
//
// The proxy is set on the Transport explicitly (http.ProxyURL): ProxyFromEnvironment ignores
// loopback destinations. Credentials go into the proxy URL's userinfo (url.UserPassword, i.e.
// what a correctly percent-encoded HTTPS_PROXY holds); net/http then sends them pre-emptively as
// Basic, on plain requests and on CONNECT — Basic is the only proxy scheme Go has. An https://
// proxy is spoken to over TLS, verified with --cacert (which also verifies https origins).
// --count N sends N requests on one client (one Transport: kept-alive connections are reused).
// Exit 0 whenever a result could be reported (a 407 or a refused CONNECT included), 2 on usage
// errors.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"time"
)

type result struct {
	Status        *int     `json:"status"`
	Body          string   `json:"body"`
	Error         *string  `json:"error"`
	ClientVersion string   `json:"client_version"`
	Statuses      []int    `json:"statuses"`
	Protocol      string   `json:"protocol,omitempty"`
	Connections   int      `json:"connections"`
	Errors        []string `json:"errors,omitempty"`
}

func main() {
	proxy := flag.String("proxy", "", "proxy URL (http:// or https://)")
	target := flag.String("url", "", "URL to fetch")
	user := flag.String("user", "", "proxy user")
	password := flag.String("password", "", "proxy password")
	cacert := flag.String("cacert", "", "PEM CA for https origins and https proxies")
	timeout := flag.Float64("timeout", 10, "seconds per request")
	count := flag.Int("count", 1, "requests sent on one client")
	flag.String("scheme-hint", "", "ignored: Go only has Basic for proxies")
	flag.Parse()
	if *proxy == "" || *target == "" || *count < 1 {
		fmt.Fprintln(os.Stderr, "usage: proxyclient --proxy URL --url URL [--user U --password P] [--cacert FILE]")
		os.Exit(2)
	}
	res := result{ClientVersion: "go " + runtime.Version() + " net/http"}
	proxyURL, err := url.Parse(*proxy)
	if err != nil {
		fail(2, "bad --proxy: %v", err)
	}
	if *user != "" || *password != "" {
		proxyURL.User = url.UserPassword(*user, *password)
	}
	tlsConfig := &tls.Config{}
	if *cacert != "" {
		pem, err := os.ReadFile(*cacert)
		if err != nil {
			fail(2, "cannot read --cacert: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail(2, "no certificate in --cacert")
		}
		tlsConfig.RootCAs = pool
	}
	// As a program that adjusts http.DefaultTransport does: HTTP/2 attempted where offered.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = http.ProxyURL(proxyURL)
	transport.TLSClientConfig = tlsConfig
	dialer := &net.Dialer{Timeout: time.Duration(*timeout * float64(time.Second))}
	transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		res.Connections++
		return dialer.DialContext(ctx, network, addr)
	}
	client := &http.Client{Transport: transport, Timeout: time.Duration(*timeout * float64(time.Second))}
	for i := 0; i < *count; i++ {
		resp, err := client.Get(*target)
		if err != nil {
			msg := err.Error()
			res.Error = &msg
			res.Errors = append(res.Errors, msg)
			res.Status = nil
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		status := resp.StatusCode
		res.Status = &status
		res.Statuses = append(res.Statuses, status)
		res.Protocol = resp.Proto
		res.Body = truncate(string(body), 2000)
		if err != nil {
			msg := "reading the body: " + err.Error()
			res.Error = &msg
		} else {
			res.Error = nil
		}
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func fail(code int, format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(code)
}
