// OpenLDAP's client library (libldap-dev), for PortcullisLDAP.
#ifndef PORTCULLIS_COPENLDAP_SHIM_H
#define PORTCULLIS_COPENLDAP_SHIM_H
#define LDAP_DEPRECATED 0
#include <ldap.h>
#include <lber.h>
#endif
