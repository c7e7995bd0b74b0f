/* idfx_reader.c - placeholder until the loader lands (see idfx_reader.h). */
#include "idfx_reader.h"
