/* Budgeted Lua pattern matching: string.find, string.match, string.gmatch and string.gsub
 * with the semantics of Lua 5.4 (reference manual §6.4 and §6.4.1), written for hookrouter,
 * whose matcher counts its work and charges it to a caller-supplied budget.
 *
 * Why: the stock functions match in C, where the sandbox's count hook never fires, so a
 * backtracking pattern (string.find(string.rep("a", 30000), ".-.-.-.-b")) could block an event
 * loop for minutes. These versions call a charge function every HR_PATTERN_STEP steps; it may
 * raise a Lua error to stop the match. A step is one attempt of a single pattern item against
 * a subject character, or one call of the recursive matcher; scanning a long set ([...]), a
 * back-reference or a replacement string is charged in proportion to its length. So the time
 * spent between two charges is bounded.
 *
 * Everything else is meant to equal Lua 5.4.4's string library: results, nil/fail returns,
 * position captures, gmatch's init argument and its literal '^', gsub's replacement forms and
 * count, the error messages ("malformed pattern (ends with '%')", "invalid capture index %2",
 * "pattern too complex", ...). Matching recursion is capped at 200 levels and captures at 32,
 * so the C stack is bounded. Character classes are those of the "C" locale, tested in ASCII
 * whatever the process locale is. No global state: each lua_State (one per thread) is
 * independent.
 */
#ifndef HR_PATTERN_H
#define HR_PATTERN_H

#include <lua.h>

#define HR_PATTERN_STEP        1024 /* steps between two calls of the charge function */
#define HR_PATTERN_MAXCAPTURES 32   /* as LUA_MAXCAPTURES */
#define HR_PATTERN_MAXDEPTH    200  /* matcher recursion levels, as MAXCCALLS in lstrlib */

/* Charge `steps` steps of matching work to the running script. Called every HR_PATTERN_STEP
 * steps, and once at the end of each find/match/gsub call and each gmatch iteration with the
 * remainder (steps > 0), always on the lua_State running the string function. It may raise a
 * Lua error (luaL_error) to stop the match: the error propagates to the caller of the string
 * function like any other, and the matcher holds no resource that it would leak. */
typedef void (*hr_pattern_charge_fn)(lua_State *L, unsigned steps);

/* Replace the fields find, match, gmatch and gsub of the table at idx (normally the string
 * library table, so that s:find(...) uses them too) with budgeted versions that report to
 * charge (NULL: count but never stop). The other fields are left alone. [-0, +0, m] */
void hr_pattern_install(lua_State *L, int idx, hr_pattern_charge_fn charge);

#endif
