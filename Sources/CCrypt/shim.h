#ifndef PORTCULLIS_CCRYPT_SHIM_H
#define PORTCULLIS_CCRYPT_SHIM_H
// libxcrypt (Debian libcrypt-dev): crypt_rn and crypt_gensalt_rn are thread-safe and
// cover bcrypt, SHA-crypt, MD5-crypt and DES crypt as written by Apache's htpasswd.
#include <crypt.h>
#endif
