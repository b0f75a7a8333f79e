// Initech proxy auto-configuration (a test fixture for Portcullis, not a real company's file).
//
// Traffic is split by URL scheme: HTTPS goes to the TLS proxy (banks to a pass-through one),
// plain HTTP to the web cache (downloads bypass the cache), FTP to the FTP gateway. Chat runs
// over SOCKS. Single-label names and the internal domain go direct.

var WEB = "PROXY web.initech.example:8080";
var TLS = "PROXY tls.initech.example:8443; PROXY web.initech.example:8080";
var TLS_PASS = "PROXY tls-pass.initech.example:3129";
var NOCACHE = "PROXY nocache.initech.example:8081";
var FTP = "PROXY ftp-gw.initech.example:2121";
var SOCKS = "SOCKS5 socks.initech.example:1080; SOCKS socks.initech.example:1080";

function FindProxyForURL(url, host) {
    // No dots: short names, localhost, IPv6 literals
    if (dnsDomainLevels(host) == 0) {
        return "DIRECT";
    }

    if (shExpMatch(host, "*.initech.example")) {
        if (host == "gateway.initech.example") {
            return "PROXY dmz-proxy.initech.example:8080";
        }
        return "DIRECT";
    }

    if (host == "chat.example" || shExpMatch(host, "*.chat.example")) {
        return SOCKS;
    }

    if (url.substring(0, 4) == "ftp:") {
        return FTP;
    }

    if (url.substring(0, 6) == "https:") {
        if (dnsDomainIs(host, ".bank.example")) {
            return TLS_PASS;
        }
        return TLS;
    }

    if (url.substring(0, 5) == "http:") {
        if (shExpMatch(url, "http://*/downloads/*") || shExpMatch(url, "*.iso")) {
            return NOCACHE;
        }
        return WEB;
    }

    return "DIRECT";
}
