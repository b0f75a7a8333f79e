/// The helpers written in JavaScript, run in every heap before the PAC file: those whose
/// browser semantics are JavaScript's own (string coercions, `RegExp`, `Date` arithmetic).
/// Each is wrapped so that its calls are recorded for `pac explain`; the natives it needs are
/// captured and removed from the global object.
enum PACPrelude {
    static let source = #"""
        (function (global, record, resolve4, isLiteral) {
            var MONTHS = { JAN: 0, FEB: 1, MAR: 2, APR: 3, MAY: 4, JUN: 5, JUL: 6, AUG: 7, SEP: 8, OCT: 9, NOV: 10, DEC: 11 };
            var DAYS = { SUN: 0, MON: 1, TUE: 2, WED: 3, THU: 4, FRI: 5, SAT: 6 };
            // Browsers look names up with `in`: inherited names are found (and never match).
            function lookUp(table, name) {
                return name in table ? table[name] : -1;
            }
            function isQuad(text) {
                var parts = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
                return parts != null && parts[1] <= 255 && parts[2] <= 255 && parts[3] <= 255 && parts[4] <= 255;
            }
            function convert(ip) {
                var parts = ip.split(".");
                return ((parts[0] & 0xff) << 24) | ((parts[1] & 0xff) << 16) | ((parts[2] & 0xff) << 8) | (parts[3] & 0xff);
            }
            // The clock moved so that its local fields show GMT's, one setter after the other
            // on the same object, as browsers do (near a date boundary this drifts, as theirs).
            function shiftToGMT(date) {
                date.setFullYear(date.getUTCFullYear());
                date.setMonth(date.getUTCMonth());
                date.setDate(date.getUTCDate());
                date.setHours(date.getUTCHours());
                date.setMinutes(date.getUTCMinutes());
                date.setSeconds(date.getUTCSeconds());
                return date;
            }
            function within(start, value, end) {
                return start <= end ? start <= value && value <= end : value >= start || value <= end;
            }
            var helpers = {
                isPlainHostName: function (host) {
                    if (typeof host != "string") throw new TypeError("Requires 1 string parameter");
                    return host.indexOf(".") == -1 && !isLiteral(host);
                },
                dnsDomainIs: function (host, domain) {
                    return host.length >= domain.length && host.substring(host.length - domain.length) == domain;
                },
                localHostOrDomainIs: function (host, hostdom) {
                    return host == hostdom || hostdom.lastIndexOf(host + ".", 0) == 0;
                },
                dnsDomainLevels: function (host) {
                    return host.split(".").length - 1;
                },
                shExpMatch: function (text, pattern) {
                    var source = pattern.replace(/\./g, "\\.").replace(/\*/g, ".*").replace(/\?/g, ".");
                    return new RegExp("^" + source + "$").test(text);
                },
                convert_addr: function (ip) {
                    return convert(ip);
                },
                isInNet: function (host, pattern, mask) {
                    if (!isQuad(pattern) || !isQuad(mask)) return false;
                    if (!isQuad(host)) {
                        host = resolve4(host);
                        if (host == null) return false;
                    }
                    return (convert(host) & convert(mask)) == (convert(pattern) & convert(mask));
                },
                weekdayRange: function () {
                    var count = arguments.length;
                    if (count < 1) return false;
                    var now = new Date();
                    var today;
                    if (arguments[count - 1] == "GMT") {
                        count--;
                        today = now.getUTCDay();
                    } else {
                        today = now.getDay();
                    }
                    var first = lookUp(DAYS, arguments[0]);
                    var last = count == 2 ? lookUp(DAYS, arguments[1]) : first;
                    if (first == -1 || last == -1) return false;
                    return within(first, today, last);
                },
                dateRange: function () {
                    var count = arguments.length;
                    if (count < 1) return false;
                    var now = new Date();
                    var gmt = arguments[count - 1] == "GMT";
                    if (gmt) count--;
                    if (count == 1) {
                        var single = parseInt(arguments[0]);
                        if (isNaN(single)) return (gmt ? now.getUTCMonth() : now.getMonth()) == lookUp(MONTHS, arguments[0]);
                        if (single < 32) return (gmt ? now.getUTCDate() : now.getDate()) == single;
                        return (gmt ? now.getUTCFullYear() : now.getFullYear()) == single;
                    }
                    var year = now.getFullYear();
                    var start = new Date(year, 0, 1, 0, 0, 0);
                    var end = new Date(year, 11, 31, 23, 59, 59);
                    var daysOnly = false;
                    var half = count >> 1;
                    for (var i = 0; i < count; i++) {
                        var bound = i < half ? start : end;
                        var value = parseInt(arguments[i]);
                        if (isNaN(value)) {
                            bound.setMonth(lookUp(MONTHS, arguments[i]));
                        } else if (value < 32) {
                            if (i < half) daysOnly = count <= 2;
                            bound.setDate(value);
                        } else {
                            bound.setFullYear(value);
                        }
                    }
                    if (daysOnly) {
                        start.setMonth(now.getMonth());
                        end.setMonth(now.getMonth());
                    }
                    if (gmt) shiftToGMT(now);
                    return within(start, now, end);
                },
                timeRange: function () {
                    var count = arguments.length;
                    if (count < 1) return false;
                    var now = new Date();
                    var gmt = arguments[count - 1] == "GMT";
                    if (gmt) count--;
                    var hour = gmt ? now.getUTCHours() : now.getHours();
                    // Whole hours, the end hour included; two hours never wrap.
                    if (count == 1) return hour == arguments[0];
                    if (count == 2) return arguments[0] <= hour && hour <= arguments[1];
                    if (count != 4 && count != 6) throw "timeRange: bad number of arguments";
                    // The bounds are today's local date at the given times.
                    var start = new Date(now.getTime());
                    var end = new Date(now.getTime());
                    var half = count >> 1;
                    if (count == 6) {
                        start.setSeconds(arguments[2]);
                        end.setSeconds(arguments[5]);
                    } else {
                        end.setSeconds(59);
                    }
                    start.setHours(arguments[0]);
                    start.setMinutes(arguments[1]);
                    end.setHours(arguments[half]);
                    end.setMinutes(arguments[half + 1]);
                    if (gmt) shiftToGMT(now);
                    return within(start, now, end);
                }
            };
            function traced(name, helper) {
                return function () {
                    var answer = helper.apply(null, arguments);
                    record.apply(null, [name, answer].concat(Array.prototype.slice.call(arguments)));
                    return answer;
                };
            }
            for (var name in helpers) {
                if (Object.prototype.hasOwnProperty.call(helpers, name)) global[name] = traced(name, helpers[name]);
            }
        })(this, __portcullis_record, __portcullis_resolve4, __portcullis_isLiteral);
        delete this.__portcullis_record;
        delete this.__portcullis_resolve4;
        delete this.__portcullis_isLiteral;
        """#

    /// `Date` fixed at `milliseconds` (`--now`): `new Date()`, `Date()` and `Date.now()` answer
    /// it; every other form of `Date` is the engine's own.
    static func fixedClock(milliseconds: Double) -> String {
        """
        (function (global, now) {
            var RealDate = global.Date;
            function PACDate(a, b, c, d, e, f, g) {
                if (!(this instanceof PACDate)) return new RealDate(now).toString();
                switch (arguments.length) {
                case 0: return new RealDate(now);
                case 1: return new RealDate(a);
                case 2: return new RealDate(a, b);
                case 3: return new RealDate(a, b, c);
                case 4: return new RealDate(a, b, c, d);
                case 5: return new RealDate(a, b, c, d, e);
                case 6: return new RealDate(a, b, c, d, e, f);
                default: return new RealDate(a, b, c, d, e, f, g);
                }
            }
            PACDate.prototype = RealDate.prototype;
            PACDate.now = function () { return now; };
            PACDate.UTC = RealDate.UTC;
            PACDate.parse = RealDate.parse;
            global.Date = PACDate;
        })(this, \(PACValue.format(milliseconds.rounded())));
        """
    }
}
