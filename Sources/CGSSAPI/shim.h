// MIT Kerberos' GSSAPI (Debian's libkrb5-dev) for the Negotiate acceptor and doctor's initiator,
// and krb5's keytab API to tell at start-up whether a keytab holds an HTTP/ key.
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5.h>

// Function-like macros do not reach Swift.
static inline int portcullis_gss_error(OM_uint32 major) { return GSS_ERROR(major) != 0; }
static inline gss_OID_set portcullis_gss_no_oid_set(void) { return GSS_C_NO_OID_SET; }
static inline gss_channel_bindings_t portcullis_gss_no_channel_bindings(void) { return GSS_C_NO_CHANNEL_BINDINGS; }
static inline int portcullis_gss_continue_needed(OM_uint32 major) { return (major & GSS_S_CONTINUE_NEEDED) != 0; }
static inline OM_uint32 portcullis_gss_routine_error(OM_uint32 major) { return GSS_ROUTINE_ERROR(major); }
static inline OM_uint32 portcullis_gss_s_bad_mech(void) { return GSS_S_BAD_MECH; }
static inline OM_uint32 portcullis_gss_c_indefinite(void) { return GSS_C_INDEFINITE; }
static inline OM_uint32 portcullis_gss_s_no_cred(void) { return GSS_S_NO_CRED; }
static inline OM_uint32 portcullis_gss_s_credentials_expired(void) { return GSS_S_CREDENTIALS_EXPIRED; }
static inline gss_OID portcullis_gss_mech_krb5(void) { return gss_mech_krb5; }
// SPNEGO (1.3.6.1.5.5.2): MIT exports no symbol for it.
static inline gss_OID portcullis_gss_mech_spnego(void) {
    static gss_OID_desc spnego = {6, (void *)"\x2b\x06\x01\x05\x05\x02"};
    return &spnego;
}
// Name types, read through functions: Swift sees the exported variables as shared mutable state.
static inline gss_OID portcullis_gss_nt_hostbased_service(void) { return GSS_C_NT_HOSTBASED_SERVICE; }
static inline gss_OID portcullis_gss_nt_user_name(void) { return GSS_C_NT_USER_NAME; }
