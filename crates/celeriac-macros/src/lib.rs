//! `#[task]`: turns a function into a `celeriac::Task`.
//!
//! The macro only writes glue a person could write by hand (see the
//! `celeriac::Task` docs): a unit struct named like the function, a `new`
//! constructor for typed calls, the original body as `run`, and a `Task`
//! implementation that binds arguments, calls `run` and serializes the
//! result. Misuse is a compile error pointing at the offending token.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, Meta, Pat, PathArguments,
    ReturnType, Token, Type, parse_macro_input,
};

/// Declares a Celeriac task. See the `celeriac` crate docs and
/// `docs/tasks.md` for the options.
///
/// ```text
/// #[celeriac::task(name = "images.resize", max_retries = 5, retry_backoff = true)]
/// async fn resize(url: String, width: u32) -> celeriac::TaskResult<String> { ... }
/// ```
///
/// (The `celeriac` crate's docs hold compiled examples.)
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let options = parse_macro_input!(attr with Punctuated::<Meta, Token![,]>::parse_terminated);
    let function = parse_macro_input!(item as ItemFn);
    expand(options, function)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

const OPTIONS: &str = "name, max_retries, default_retry_delay, retry_backoff, retry_backoff_max, \
                       retry_jitter, autoretry_for, time_limit, soft_time_limit, acks_late, \
                       ignore_result, track_started, queue, priority, expires, rate_limit, skip_succeeded, unique_for, global_concurrency, limit_key, global_rate_limit, bind";

/// The parsed `#[task(...)]` options.
#[derive(Default)]
struct Options {
    name: Option<syn::LitStr>,
    bind: bool,
    /// `field: value` initializers for `celeriac::TaskOptions`.
    fields: Vec<TokenStream2>,
}

fn parse_options(metas: Punctuated<Meta, Token![,]>) -> syn::Result<Options> {
    let mut options = Options::default();
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new_spanned(
                &meta,
                format!("expected `option = value`; options are: {OPTIONS}"),
            ));
        };
        let key = nv.path.get_ident().ok_or_else(|| {
            syn::Error::new_spanned(
                &nv.path,
                format!("unknown task option; options are: {OPTIONS}"),
            )
        })?;
        let value = &nv.value;
        let field = match key.to_string().as_str() {
            "name" => {
                options.name = Some(string(value, "name", "name = \"images.resize\"")?);
                continue;
            }
            "bind" => {
                options.bind = boolean(value, "bind", "bind = true")?;
                continue;
            }
            "max_retries" => {
                let n = integer(value, "max_retries", "max_retries = 5")?;
                quote!(max_retries: ::core::option::Option::Some(#n))
            }
            "global_concurrency" => {
                let n = integer(value, "global_concurrency", "global_concurrency = 5")?;
                quote!(global_concurrency: ::core::option::Option::Some(#n))
            }
            "limit_key" => {
                let key = string(value, "limit_key", "limit_key = \"account_id\"")?;
                quote!(limit_key: ::core::option::Option::Some(::std::string::String::from(#key)))
            }
            "priority" => {
                let n = integer(value, "priority", "priority = 5")?;
                quote!(priority: ::core::option::Option::Some(#n))
            }
            "retry_backoff" => match value {
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }) => {
                    let factor = u32::from(b.value);
                    quote!(retry_backoff: ::core::option::Option::Some(#factor))
                }
                _ => {
                    let n = integer(
                        value,
                        "retry_backoff",
                        "retry_backoff = true (or a factor in seconds, e.g. 2)",
                    )?;
                    quote!(retry_backoff: ::core::option::Option::Some(#n))
                }
            },
            "retry_jitter" | "acks_late" | "ignore_result" | "track_started" | "skip_succeeded" => {
                let b = boolean(value, &key.to_string(), &format!("{key} = true"))?;
                quote!(#key: ::core::option::Option::Some(#b))
            }
            "default_retry_delay"
            | "retry_backoff_max"
            | "time_limit"
            | "soft_time_limit"
            | "expires"
            | "unique_for" => {
                let d = seconds(value, &key.to_string())?;
                quote!(#key: ::core::option::Option::Some(#d))
            }
            "queue" => {
                let q = string(value, "queue", "queue = \"images\"")?;
                quote!(queue: ::core::option::Option::Some(::std::string::String::from(#q)))
            }
            "rate_limit" => {
                let rate = string(value, "rate_limit", "rate_limit = \"10/s\"")?;
                quote!(rate_limit: ::core::option::Option::Some(::std::string::String::from(#rate)))
            }
            "global_rate_limit" => {
                let rate = string(value, "global_rate_limit", "global_rate_limit = \"100/m\"")?;
                quote!(global_rate_limit: ::core::option::Option::Some(::std::string::String::from(#rate)))
            }
            "autoretry_for" => {
                let Expr::Array(list) = value else {
                    return Err(syn::Error::new_spanned(
                        value,
                        "autoretry_for expects a list of error types, e.g. `autoretry_for = [std::io::Error]`",
                    ));
                };
                let matchers = list.elems.iter().map(|ty| {
                    quote_spanned!(ty.span()=> (|e: &::celeriac::TaskError| e.is::<#ty>()) as ::celeriac::RetryMatcher)
                });
                quote!(autoretry_for: ::std::vec![#(#matchers),*])
            }
            _ => {
                return Err(syn::Error::new_spanned(
                    key,
                    format!("unknown task option `{key}`; options are: {OPTIONS}"),
                ));
            }
        };
        options.fields.push(field);
    }
    Ok(options)
}

fn string(value: &Expr, key: &str, example: &str) -> syn::Result<syn::LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("{key} expects a string literal, e.g. `{example}`"),
        )),
    }
}

fn boolean(value: &Expr, key: &str, example: &str) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("{key} expects `true` or `false`, e.g. `{example}`"),
        )),
    }
}

fn integer(value: &Expr, key: &str, example: &str) -> syn::Result<syn::LitInt> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => Ok(i.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("{key} expects an integer, e.g. `{example}`"),
        )),
    }
}

fn seconds(value: &Expr, key: &str) -> syn::Result<TokenStream2> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => Ok(quote!(::std::time::Duration::from_secs(#i))),
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => Ok(quote!(::std::time::Duration::from_secs_f64(#f))),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("{key} expects a number of seconds, e.g. `{key} = 30` or `{key} = 1.5`"),
        )),
    }
}

/// One task parameter.
struct Param {
    ident: syn::Ident,
    ty: Type,
    default: Option<Expr>,
}

enum RequestParam {
    ByValue,
    ByRef,
}

fn expand(metas: Punctuated<Meta, Token![,]>, mut function: ItemFn) -> syn::Result<TokenStream2> {
    let options = parse_options(metas)?;
    check_signature(&function)?;

    let mut request_param = None;
    let mut params = Vec::new();
    for (position, input) in function.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new_spanned(
                input,
                "tasks cannot take `self`; make the task a free function",
            ));
        };
        let default = take_default(&mut typed.attrs)?;
        if options.bind && position == 0 {
            request_param = Some(request_kind(&typed.ty)?);
            if let Some(d) = default {
                return Err(syn::Error::new_spanned(
                    d,
                    "the request parameter cannot have a default",
                ));
            }
            continue;
        }
        let Pat::Ident(pat) = &*typed.pat else {
            return Err(syn::Error::new_spanned(
                &typed.pat,
                "task parameters must be plain names (`width: u32`), so callers can pass them by keyword",
            ));
        };
        if let Type::ImplTrait(_) | Type::Reference(_) = &*typed.ty {
            return Err(syn::Error::new_spanned(
                &typed.ty,
                "task parameters must be owned, deserializable types (e.g. `String`, not `&str` or `impl Trait`)",
            ));
        }
        params.push(Param {
            ident: pat.ident.clone(),
            ty: (*typed.ty).clone(),
            default,
        });
    }
    if options.bind && request_param.is_none() {
        return Err(syn::Error::new_spanned(
            &function.sig,
            "`bind = true` needs the request as the first parameter: `request: celeriac::Request`",
        ));
    }

    let vis = &function.vis;
    let ident = &function.sig.ident;
    let is_async = function.sig.asyncness.is_some();
    let (docs, other_attrs): (Vec<Attribute>, Vec<Attribute>) = function
        .attrs
        .iter()
        .cloned()
        .partition(|a| a.path().is_ident("doc"));
    let name = match &options.name {
        Some(name) => quote!(#name),
        None => {
            let fn_name = ident.to_string();
            quote!({
                static NAME: ::std::sync::OnceLock<::std::string::String> =
                    ::std::sync::OnceLock::new();
                NAME.get_or_init(|| {
                    ::std::concat!(::std::module_path!(), "::", #fn_name).replace("::", ".")
                })
            })
        }
    };
    let (output, returns_result) = output_type(&function.sig.output);
    let fields = &options.fields;
    let param_idents: Vec<_> = params.iter().map(|p| &p.ident).collect();
    let param_types: Vec<_> = params.iter().map(|p| &p.ty).collect();
    let param_names: Vec<String> = params.iter().map(|p| p.ident.to_string()).collect();
    let bindings = params
        .iter()
        .enumerate()
        .map(|(index, p)| binding(index, p));

    let request_arg = match request_param {
        None => quote!(),
        Some(RequestParam::ByValue) => quote!(request,),
        Some(RequestParam::ByRef) => quote!(&request,),
    };
    let run = quote!(#ident::run(#request_arg #(#param_idents),*));
    let blocking = !is_async;
    let invoke = if is_async {
        quote!(#run.await)
    } else {
        quote!(::celeriac::__private::run_blocking(move || #run).await?)
    };
    let convert = if returns_result {
        quote!(::celeriac::__private::output(out.map_err(
            ::core::convert::Into::<::celeriac::TaskError>::into
        )?))
    } else {
        quote!(::celeriac::__private::output(out))
    };
    let unused_request = if request_param.is_none() {
        quote!(let _ = request;)
    } else {
        quote!()
    };

    // The original function becomes `run`, with its attributes and body.
    let mut run_fn = function.clone();
    run_fn.sig.ident = format_ident!("run");
    run_fn.attrs = other_attrs;
    run_fn.vis = vis.clone();

    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::default::Default)]
        #vis struct #ident;

        impl #ident {
            /// A call of this task, to send with `.apply_async(&app)`.
            #[allow(clippy::too_many_arguments)]
            #vis fn new(#(#param_idents: #param_types),*) -> ::celeriac::TaskCall<#output> {
                ::celeriac::TaskCall::from_serialized(
                    ::celeriac::Task::name(&#ident),
                    ::std::vec![#((#param_names, ::celeriac::__private::serde_json::to_value(&#param_idents))),*],
                )
            }

            /// A signature of this task (Celery's `.s()`): for chains,
            /// groups, chords and links. The same as `new`.
            #[allow(clippy::too_many_arguments)]
            #vis fn s(#(#param_idents: #param_types),*) -> ::celeriac::TaskCall<#output> {
                #ident::new(#(#param_idents),*)
            }
            /// An immutable signature (Celery's `.si()`): a parent's result
            /// is not prepended to its arguments.
            #[allow(clippy::too_many_arguments)]
            #vis fn si(#(#param_idents: #param_types),*) -> ::celeriac::TaskCall<#output> {
                #ident::new(#(#param_idents),*).immutable()
            }
            /// The task's body, callable directly (no broker involved).
            #run_fn
        }

        impl ::celeriac::Task for #ident {
            fn name(&self) -> &str {
                #name
            }

            fn options(&self) -> ::celeriac::TaskOptions {
                ::celeriac::TaskOptions {
                    #(#fields,)*
                    ..::core::default::Default::default()
                }
            }

            fn parameters(&self) -> &[&'static str] {
                &[#(#param_names),*]
            }

            fn is_blocking(&self) -> bool {
                #blocking
            }

            fn call(&self, request: ::celeriac::Request, mut args: ::celeriac::Arguments) -> ::celeriac::TaskFuture {
                ::celeriac::__private::catch_panic(async move {
                    #unused_request
                    #(#bindings)*
                    args.finish()?;
                    let out = #invoke;
                    #convert
                })
            }
        }
    })
}

fn check_signature(function: &ItemFn) -> syn::Result<()> {
    let sig = &function.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "tasks cannot be generic: the worker must know the argument types; use concrete types",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(syn::Error::new_spanned(c, "tasks cannot be `const fn`"));
    }
    if let Some(u) = &sig.unsafety {
        return Err(syn::Error::new_spanned(u, "tasks cannot be `unsafe fn`"));
    }
    if let Some(abi) = &sig.abi {
        return Err(syn::Error::new_spanned(
            abi,
            "tasks cannot be `extern` functions",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new_spanned(v, "tasks cannot be variadic"));
    }
    Ok(())
}

/// Removes and returns a `#[default(expr)]` parameter attribute.
fn take_default(attrs: &mut Vec<Attribute>) -> syn::Result<Option<Expr>> {
    let mut default = None;
    let mut kept = Vec::with_capacity(attrs.len());
    for attr in attrs.drain(..) {
        if attr.path().is_ident("default") {
            default = Some(attr.parse_args::<Expr>().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "write defaults as `#[default(expression)]`, e.g. `#[default(800)] width: u32`",
                )
            })?);
        } else {
            kept.push(attr);
        }
    }
    *attrs = kept;
    Ok(default)
}

fn request_kind(ty: &Type) -> syn::Result<RequestParam> {
    let is_request = |ty: &Type| match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == "Request"),
        _ => false,
    };
    match ty {
        Type::Reference(r) if is_request(&r.elem) => Ok(RequestParam::ByRef),
        other if is_request(other) => Ok(RequestParam::ByValue),
        other => Err(syn::Error::new_spanned(
            other,
            "with `bind = true` the first parameter must be the request: `request: celeriac::Request` or `&celeriac::Request`",
        )),
    }
}

/// The task's output type, and whether the function returns a `Result`.
fn output_type(output: &ReturnType) -> (TokenStream2, bool) {
    let ReturnType::Type(_, ty) = output else {
        return (quote!(()), false);
    };
    if let Type::Path(path) = &**ty
        && let Some(last) = path.path.segments.last()
        && (last.ident == "Result" || last.ident == "TaskResult")
        && let PathArguments::AngleBracketed(args) = &last.arguments
        && let Some(GenericArgument::Type(ok)) = args.args.first()
    {
        return (quote!(#ok), true);
    }
    (quote!(#ty), false)
}

/// The statement binding parameter `index` from the call's arguments.
fn binding(index: usize, param: &Param) -> TokenStream2 {
    let Param { ident, ty, default } = param;
    let name = ident.to_string();
    let span = Span::call_site().located_at(ty.span());
    if let Some(default) = default {
        return quote_spanned!(span=>
            let #ident: #ty = match args.take_optional::<#ty>(#index, #name)? {
                ::core::option::Option::Some(value) => value,
                ::core::option::Option::None => #default,
            };
        );
    }
    if let Some(inner) = option_inner(ty) {
        return quote_spanned!(span=> let #ident: #ty = args.take_optional::<#inner>(#index, #name)?;);
    }
    quote_spanned!(span=> let #ident: #ty = args.take::<#ty>(#index, #name)?;)
}

/// `T` for `Option<T>`.
fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(inner) => Some(inner),
        _ => None,
    }
}
