import Testing

@testable import PortcullisDoctor

/// The evidence read from the wire and from BoringSSL's errors.
@Suite struct TLSEvidenceTests {
    static func record(_ type: UInt8, _ payload: [UInt8]) -> [UInt8] {
        [type, 3, 3, UInt8(payload.count >> 8), UInt8(payload.count & 0xff)] + payload
    }

    static func message(_ type: UInt8, _ body: [UInt8]) -> [UInt8] {
        [type, 0, UInt8(body.count >> 8), UInt8(body.count & 0xff)] + body
    }

    @Test func aTLS12CertificateRequestIsSeenAcrossRecords() {
        let flight =
            Self.message(2, [1, 2, 3]) + Self.message(11, Array(repeating: 7, count: 40))
            + Self.message(13, [1, 1, 0, 0]) + Self.message(14, [])
        // Split across two records, the second one mid-message.
        let bytes = Self.record(22, Array(flight.prefix(30))) + Self.record(22, Array(flight.dropFirst(30)))
        #expect(TLSRecordReader.read(bytes).certificateRequested)
        #expect(
            !TLSRecordReader.read(Self.record(22, Self.message(2, [1]) + Self.message(14, []))).certificateRequested
        )
    }

    @Test func aByte13InsideAnotherMessageIsNotACertificateRequest() {
        let bytes = Self.record(22, Self.message(11, [13, 0, 0, 0, 13]) + Self.message(14, []))
        #expect(!TLSRecordReader.read(bytes).certificateRequested)
    }

    @Test func aPlaintextAlertIsRead() {
        #expect(TLSRecordReader.read(Self.record(21, [2, 40])).alert == 40)
    }

    @Test func readingStopsAtTheEncryptedPartOfTLS13() {
        let bytes =
            Self.record(22, Self.message(2, [1])) + Self.record(20, [1])
            + Self.record(23, Self.message(13, [0]))
        let seen = TLSRecordReader.read(bytes)
        #expect(!seen.certificateRequested && seen.alert == nil)
    }

    @Test func httpTextIsNotATLSRecord() {
        let bytes = Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8)
        #expect(TLSRecordReader.read(bytes) == TLSRecordReader.Seen())
        #expect(TLSEvidence(error: nil, peerBytes: bytes).peerSpokeHTTP)
    }

    @Test func boringSSLReasonsAreReadFromAnErrorStack() {
        let text =
            "handshakeFailed(NIOSSL.BoringSSLError.sslError([Error: 268436502 error:10000416:SSL routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED at /x/tls_record.cc:592, Error: 1 error:1:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at y]))"
        #expect(TLSEvidence.reasonTokens(text) == ["TLSV1_ALERT_CERTIFICATE_REQUIRED", "CERTIFICATE_VERIFY_FAILED"])
        let evidence = TLSEvidence(reasons: TLSEvidence.reasonTokens(text))
        #expect(evidence.receivedAlert("CERTIFICATE_REQUIRED") == "TLSV1_ALERT_CERTIFICATE_REQUIRED")
        #expect(evidence.isVerificationFailure)
        #expect(Diagnosis.alertName("TLSV1_ALERT_CERTIFICATE_REQUIRED") == "certificate_required")
    }
}
