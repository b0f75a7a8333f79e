// ACME Corp. proxy auto-configuration (a test fixture for Portcullis, not a real company's file).
//
// Internal names and networks go direct. The partner extranet has its own gateway. Windows
// Update skips the first proxy. Everything else goes through two proxies, then direct when both
// are down.

var MAIN = "PROXY proxy1.acme.example:3128; PROXY proxy2.acme.example:3128; DIRECT";
var PARTNER = "PROXY partner-gw.acme.example:8080; PROXY proxy1.acme.example:3128";
var UPDATES = "PROXY proxy2.acme.example:3128; DIRECT";

var INTERNAL_DOMAINS = [".acme.example", ".acme-corp.internal", ".acme.lan"];

var INTERNAL_NETS = [
    ["10.0.0.0", "255.0.0.0"],
    ["172.16.0.0", "255.240.0.0"],
    ["192.168.0.0", "255.255.0.0"],
    ["127.0.0.0", "255.0.0.0"]
];

function isPartner(host) {
    return dnsDomainIs(host, ".partner.acme.example") ||
           host == "globex-partner.example" ||
           dnsDomainIs(host, ".globex-partner.example");
}

function isInternalAddress(host) {
    if (!isResolvable(host)) {
        return false;
    }
    var ip = dnsResolve(host);
    for (var i = 0; i < INTERNAL_NETS.length; i++) {
        if (isInNet(ip, INTERNAL_NETS[i][0], INTERNAL_NETS[i][1])) {
            return true;
        }
    }
    return false;
}

function FindProxyForURL(url, host) {
    // Short names (http://intranet/) and this machine
    if (isPlainHostName(host) || localHostOrDomainIs(host, "localhost.localdomain")) {
        return "DIRECT";
    }

    // The partner extranet first: it is a subdomain of acme.example
    if (isPartner(host)) {
        return PARTNER;
    }

    // The public web site is hosted outside
    if (host == "www.acme.example" || host == "acme.example") {
        return MAIN;
    }

    for (var i = 0; i < INTERNAL_DOMAINS.length; i++) {
        if (dnsDomainIs(host, INTERNAL_DOMAINS[i])) {
            return "DIRECT";
        }
    }

    // Addresses and names in the internal ranges
    if (isInternalAddress(host)) {
        return "DIRECT";
    }

    if (shExpMatch(host, "*.windowsupdate.com") || shExpMatch(host, "*.update.microsoft.com")) {
        return UPDATES;
    }

    return MAIN;
}
