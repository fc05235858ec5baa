/* placeholder until the CLI lands (same session) */
#include <stdio.h>
int main(void)
{
    fputs("hookrouter: not built yet\n", stderr);
    return 1;
}
