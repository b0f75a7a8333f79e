#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The process' limit on open descriptors. Each forwarded or tunnelled connection holds two
/// (client and origin), so Debian's default soft limit of 1 024 would cap the proxy at about
/// 500 of them; like HAProxy and nginx (`worker_rlimit_nofile`), `serve` raises the soft limit
/// to the hard one at start.
enum DescriptorLimit {
    /// A hard limit of "unlimited" still gets a finite soft one (the kernel's `nr_open` default).
    static let ceiling: UInt64 = 1 << 20

    /// Raises the soft limit as far as allowed; returns the limit in force afterwards, or nil
    /// if it cannot be read.
    static func raiseSoftToHard() -> UInt64? {
        var limit = rlimit()
        guard getrlimit(Self.resource, &limit) == 0 else { return nil }
        let wanted = min(UInt64(limit.rlim_max), Self.ceiling)
        if UInt64(limit.rlim_cur) < wanted {
            var raised = limit
            raised.rlim_cur = rlim_t(wanted)
            if setrlimit(Self.resource, &raised) == 0 { return wanted }
        }
        return UInt64(limit.rlim_cur)
    }

    /// Connections that `descriptors` hold with room to spare: two each (client and origin), after
    /// a reserve of an eighth (at least 64) for idle pooled upstream connections, the user
    /// database, logs, the PAC evaluator and the runtime's own (libdispatch ends the process when
    /// it cannot open one).
    static func connectionCap(descriptors: UInt64) -> Int {
        let reserve = max(64, descriptors / 8)
        return Int(max(1, (descriptors - min(descriptors, reserve)) / 2))
    }

    #if canImport(Glibc)
        private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
        private static let resource = RLIMIT_NOFILE
    #endif
}
