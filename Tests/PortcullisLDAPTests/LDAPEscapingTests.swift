import Testing

@testable import PortcullisLDAP

/// RFC 4515 §3 and §4 (filter values) and RFC 4514 §2.4 (DN values), and the attacks a user name
/// can carry into a filter.
@Suite struct LDAPEscapingTests {
    @Test(arguments: [
        // RFC 4515 §4's examples, as values.
        ("Parens R Us (for all your parenthetical needs)", #"Parens R Us \28for all your parenthetical needs\29"#),
        ("*", #"\2a"#),
        (#"C:\MyFile"#, #"C:\5cMyFile"#),
        ("\u{0}\u{0}\u{0}\u{4}", #"\00\00\00\04"#),
        // UTF-8 stays as it is (RFC 4515 allows it; Lučić is the RFC's own example).
        ("Lučić", "Lučić"),
        // Injections: nothing of the filter's syntax survives.
        ("*)(uid=*))(|(uid=*", #"\2a\29\28uid=\2a\29\29\28|\28uid=\2a"#),
        ("admin)(&", #"admin\29\28&"#),
        ("a\u{7f}b\nc", #"a\7fb\0ac"#),
    ])
    func filterValues(value: String, escaped: String) {
        #expect(LDAPEscaping.filterValue(value) == escaped)
    }

    @Test func theTemplateGetsTheEscapedNameEverywhere() {
        #expect(
            LDAPEscaping.filter("(|(uid=%s)(mail=%s))", user: "x*)")
                == #"(|(uid=x\2a\29)(mail=x\2a\29))"#
        )
    }

    @Test(arguments: [
        ("plain", "plain"),
        ("Sam, Jr.", #"Sam\, Jr."#),
        ("a+b=c;d<e>\"f\\", #"a\+b\=c\;d\<e\>\"f\\"#),
        ("#lead", ##"\#lead"##),
        (" both ", #"\ both\ "#),
        ("nul\u{0}", #"nul\00"#),
    ])
    func dnValues(value: String, escaped: String) {
        #expect(LDAPEscaping.dnValue(value) == escaped)
    }
}

/// How a group DN counts in the access rules.
@Suite struct LDAPGroupNameTests {
    @Test func aGroupCountsUnderItsDNAndItsFirstValue() {
        #expect(
            LDAPDirectory.groupNames(["cn=staff,ou=groups,dc=example,dc=org", #"cn=R\, D,ou=groups,dc=example,dc=org"#])
                == [
                    "cn=staff,ou=groups,dc=example,dc=org", "staff",
                    #"cn=R\, D,ou=groups,dc=example,dc=org"#, "R, D",
                ]
        )
        #expect(LDAPDirectory.groupNames([]) == [])
    }
}

@Suite struct LDAPPresetTests {
    @Test func activeDirectoryFindsUsersByEitherNameAndGroupsThroughNesting() {
        var settings = LDAPDirectory.Settings(urls: ["ldaps://dc.example.org"], base: "dc=example,dc=org")
        settings.applyActiveDirectoryPreset()
        #expect(
            LDAPEscaping.filter(settings.userFilter, user: "j*")
                == #"(&(objectClass=user)(|(sAMAccountName=j\2a)(userPrincipalName=j\2a)))"#
        )
        #expect(settings.nameAttribute == "sAMAccountName" && settings.nestedGroups)
        #expect(
            LDAPDirectory.nestedGroupFilter(userDN: #"CN=Smith\, J (ops),OU=Users,DC=example,DC=org"#)
                == #"(member:1.2.840.113556.1.4.1941:=CN=Smith\5c, J \28ops\29,OU=Users,DC=example,DC=org)"#
        )
    }
}
