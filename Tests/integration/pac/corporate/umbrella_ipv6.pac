// Umbrella Corp. proxy auto-configuration (a test fixture for Portcullis, not a real company's
// file).
//
// A dual-stack network. FindProxyForURLEx, Microsoft's IPv6-aware entry point, sees every
// address of a name (dnsResolveEx) and of this machine (myIpAddressEx) and tests them with
// isInNetEx. FindProxyForURL is the old IPv4-only version, kept for clients that do not call the
// Ex entry point; it deliberately answers differently ("legacy") so a test can tell which one
// ran.

var INTERNAL = ["2001:db8:100::/40", "fd00::/8", "10.0.0.0/8", "192.168.0.0/16"];
var V6_OFFICE = ["2001:db8:200::/48"];

var V6_PROXY = "PROXY proxy-v6.umbrella.example:3128; PROXY proxy-v4.umbrella.example:3128";
var V4_PROXY = "PROXY proxy-v4.umbrella.example:3128; DIRECT";

// Whether any address of the ";"-separated list is in any of the prefixes
function anyInNet(addresses, prefixes) {
    var list = addresses.split(";");
    for (var i = 0; i < list.length; i++) {
        for (var j = 0; j < prefixes.length; j++) {
            if (isInNetEx(list[i], prefixes[j])) {
                return true;
            }
        }
    }
    return false;
}

function FindProxyForURLEx(url, host) {
    if (isPlainHostName(host)) {
        return "DIRECT";
    }
    if (!isResolvableEx(host)) {
        return V6_PROXY;
    }
    // IPv6 first: the order the proxies are tried in does not matter here, the lists do
    var addresses = sortIpAddressList(dnsResolveEx(host));
    if (anyInNet(addresses, INTERNAL)) {
        return "DIRECT";
    }
    if (anyInNet(myIpAddressEx(), V6_OFFICE)) {
        return V6_PROXY;
    }
    return V4_PROXY;
}

function FindProxyForURL(url, host) {
    if (isPlainHostName(host) || isInNet(host, "10.0.0.0", "255.0.0.0")) {
        return "DIRECT";
    }
    return "PROXY legacy.umbrella.example:3128";
}
