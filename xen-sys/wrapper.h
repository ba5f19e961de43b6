/* Everything xenlight-sys binds. libxl.h pulls in libxl_event.h, xentoollog.h
 * and the generated type headers; libxl_utils.h adds the name/domid helpers;
 * xenstore.h the few xs_* reads libxl has no public call for.
 * stdio.h is here only for vsnprintf, which formats a logger's va_list. */
#include <stdio.h>
#include <libxl.h>
#include <libxl_utils.h>
#include <xentoollog.h>
/* xenstore: what guests publish about themselves (e.g. their addresses). */
#include <xenstore.h>
