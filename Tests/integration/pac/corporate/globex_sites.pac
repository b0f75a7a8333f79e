// Globex proxy auto-configuration (a test fixture for Portcullis, not a real company's file).
//
// Each office uses its own proxy first and the other office's as the fallback; the office is
// found from the machine's address. On weekends (local time) and during the nightly
// maintenance window (01:00-02:59 GMT) only the backup proxy runs. The market-data feed goes
// through the low-latency proxy during trading hours, Monday to Friday 08:00-18:30 local.

var OFFICES = [
    // network, mask, proxies
    ["192.168.10.0", "255.255.255.0", "PROXY proxy.lon.globex.example:8080; PROXY proxy.fra.globex.example:8080"],
    ["192.168.20.0", "255.255.255.0", "PROXY proxy.fra.globex.example:8080; PROXY proxy.lon.globex.example:8080"],
    ["10.8.0.0", "255.255.0.0", "PROXY vpn-proxy.globex.example:3128"]
];

var BACKUP = "PROXY backup.globex.example:3128; DIRECT";

function officeProxies() {
    var me = myIpAddress();
    for (var i = 0; i < OFFICES.length; i++) {
        if (isInNet(me, OFFICES[i][0], OFFICES[i][1])) {
            return OFFICES[i][2];
        }
    }
    return "PROXY proxy.lon.globex.example:8080; DIRECT";
}

function FindProxyForURL(url, host) {
    if (isPlainHostName(host) || dnsDomainIs(host, ".globex.example")) {
        return "DIRECT";
    }

    if (weekdayRange("SAT", "SUN")) {
        return BACKUP;
    }

    if (timeRange(1, 2, "GMT")) {
        return BACKUP;
    }

    if (dnsDomainIs(host, ".marketdata.example") && weekdayRange("MON", "FRI") && timeRange(8, 0, 18, 30)) {
        return "PROXY md-proxy.globex.example:8443";
    }

    return officeProxies();
}
